"""The UI → API workflow converter, for the tests: the package's `training/workflow_api.py` under its old name."""
from comfyui_salt.training.workflow_api import (CONTROL_VALUES, DROPPED_TYPES, MODE_BYPASSED, MODE_MUTED,  # noqa: F401
                                                SEED_NAMES, WIDGET_TYPES, ConvertError, Converter, convert,
                                                has_control_widget, is_widget, ordered_inputs, parse_links,
                                                widget_values)
