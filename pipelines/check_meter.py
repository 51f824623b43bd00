"""DVC stage `check_meter` (all logic in semknobs.stages.check_meter)."""

from semknobs.stage import stage_cli
from semknobs.stages import check_meter

main = stage_cli(check_meter)

if __name__ == "__main__":
    raise SystemExit(main())
