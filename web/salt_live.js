// Salt live view: plays the frames SaltLiveStream pushes (websocket event "salt.live") inside its node at the
// video's frame rate, shows the chunk period, and sends intents (a typed prompt, Pause, Resume, Stop) to the pack's
// routes /salt/live/<stream_id>/<action>. The server owns the stream and checks every message; this page only
// draws and sends.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const FPS = 16;              // playback rate of pushed frames (Wan 2.1's 16 fps)
const QUEUED_PUSHES = 2;     // at most this many pushes' frames wait to be shown: when the stream runs faster than
                             // playback, older frames are dropped, so what is shown stays within 2 chunks of now

function widgetValue(node, name) {
  const widget = node.widgets?.find((w) => w.name === name);
  return widget ? widget.value : undefined;
}

function makeView(node) {
  const root = document.createElement("div");
  root.className = "salt-live";
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;";
  const img = document.createElement("img");
  img.style.cssText = "width:100%;image-rendering:pixelated;background:#111;min-height:64px;object-fit:contain;";
  const status = document.createElement("div");
  status.style.cssText = "font:11px monospace;color:#aaa;";
  status.textContent = "not streaming";
  const text = document.createElement("input");
  text.type = "text";
  text.placeholder = "new prompt, then Apply";
  text.style.cssText = "width:100%;";
  const row = document.createElement("div");
  row.style.cssText = "display:flex;gap:4px;";
  const send = async (action, body) => {
    const stream = widgetValue(node, "stream_id") || "live";
    const news = view.news;
    let reply;
    try {
      reply = await api.fetchApi(`/salt/live/${encodeURIComponent(stream)}/${action}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body ?? {}),
      });
    } catch (error) {          // the server is gone (stopped, restarting): say so where the click was
      status.textContent = `${action}: no reply from the server (${error?.message ?? error})`;
      return;
    }
    const data = await reply.json().catch(() => ({}));
    // the stream's own news since the click (a chunk, the run's end: Stop acts between steps, often before this
    // reply) is newer than "ok": it stays
    if (reply.ok && view.news !== news) return;
    status.textContent = reply.ok ? `${action}: ok` : `${action}: ${data.error ?? reply.status}`;
  };
  for (const [label, action] of [["Apply", "prompt"], ["Pause", "pause"], ["Resume", "resume"], ["Stop", "stop"]]) {
    const button = document.createElement("button");
    button.textContent = label;
    button.dataset.saltLive = action;
    button.onclick = () => send(action, action === "prompt" ? { text: text.value } : undefined);
    row.appendChild(button);
  }
  root.append(img, status, text, row);
  const view = { img, status, queue: [], timer: null, shown: 0, news: 0 };
  view.say = (text) => { view.news += 1; status.textContent = text; };   // what the stream itself reports
  view.play = () => {
    if (view.timer) return;
    view.timer = setInterval(() => {
      const frame = view.queue.shift();
      if (frame === undefined) { clearInterval(view.timer); view.timer = null; return; }
      img.src = frame;
      view.shown += 1;
      window.saltLiveShown = (window.saltLiveShown ?? 0) + 1;
    }, 1000 / FPS);
  };
  node.saltLive = view;
  node.addDOMWidget("salt_live_view", "salt_live", root, { serialize: false });
}

app.registerExtension({
  name: "salt.live",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "SaltLiveStream") return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      makeView(this);
      this.setSize([Math.max(this.size[0], 320), Math.max(this.size[1], 420)]);
      return result;
    };
  },
  setup() {
    // the live view of the node an event names, or undefined: its id is the server's execution id, "12" on the
    // root graph, "12:5" node 5 inside subgraph node 12 (and so on, one id per level), a string or a number
    const viewOf = (detail) => {
      let graph = app.graph;
      let node;
      for (const part of String(detail.node ?? "").split(":")) {
        if (node) graph = node.subgraph;
        node = graph?.getNodeById?.(Number(part)) ?? graph?.getNodeById?.(part);
        if (!node) return undefined;
      }
      return node?.saltLive;
    };
    api.addEventListener("salt.live", ({ detail }) => {
      const view = viewOf(detail);
      window.saltLiveReceived = (window.saltLiveReceived ?? 0) + detail.frames.length;
      if (!view) return;
      // nothing new to show (the server left the frames out, its send queue behind a slow connection, or a Wan
      // chunk waits for its pair): what is queued plays on
      if (!detail.frames.length) {
        const what = detail.skipped ? `${detail.skipped} frames skipped (the connection is slower than the stream)`
          : "0 frames";
        view.say(`chunk ${detail.chunk} · ${detail.period_ms} ms per chunk · ${what}`);
        return;
      }
      view.queue.push(...detail.frames);
      const most = QUEUED_PUSHES * detail.frames.length;
      if (view.queue.length > most) view.queue.splice(0, view.queue.length - most);
      view.say(`chunk ${detail.chunk} · ${detail.period_ms} ms per chunk · ${detail.frames.length} frames`);
      view.play();
    });
    api.addEventListener("salt.live.end", ({ detail }) => {
      const view = viewOf(detail);
      window.saltLiveEnded = detail.ended;
      if (!view) return;
      const again = detail.ended === "paused too long" ? " · queue again to continue" : "";
      view.say(`ended (${detail.ended}) after chunk ${detail.chunk}${again}`);
    });
  },
});
