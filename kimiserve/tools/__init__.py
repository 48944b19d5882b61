"""Built-in tools the server runs for the model: a sandboxed Python interpreter and search.

    UnsupportedFeature (kimiserve.errors)
    └── ToolUnavailable      the tool cannot run on this server (no bwrap, no search backend);
                             parameter "tools", refused before generation
    ToolFailed               one run failed in a way the model should read (bad arguments, a
                             search backend that did not answer); `BuiltinTool.run` turns it
                             into an error `ToolOutput`, so the pipeline never has to catch it

The pipeline only needs `builtin.py`: `build_registry(settings)` and `BuiltinTool.run`.
"""

from kimiserve.tools.errors import ToolFailed, ToolUnavailable

__all__ = ["ToolFailed", "ToolUnavailable"]
