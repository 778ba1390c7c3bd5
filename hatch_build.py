"""Build hook: editable installs need the auto-registration .pth too (regular wheels get it by force-include)."""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class AutoloadPthHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if version == "editable":
            build_data["force_include_editable"]["carafe_ultra_autoload.pth"] = "carafe_ultra_autoload.pth"
