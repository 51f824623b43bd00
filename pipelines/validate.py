"""DVC stage `validate` (all logic in semknobs.stages.validate)."""

from semknobs.stage import stage_cli
from semknobs.stages import validate

main = stage_cli(validate)

if __name__ == "__main__":
    raise SystemExit(main())
