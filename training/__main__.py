"""The command line moved to the package root: `python -m comfyui_salt <command>` (same commands and flags)."""
import sys

if __name__ == "__main__":
    sys.exit("the Salt command line moved: run `python -m comfyui_salt " + " ".join(sys.argv[1:]) + "` (same "
             "commands and flags; see CHANGELOG.md)")
