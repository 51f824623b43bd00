"""DVC stage `explain` (all logic in semknobs.stages.explain)."""

from semknobs.stage import stage_cli
from semknobs.stages import explain

main = stage_cli(explain)

if __name__ == "__main__":
    raise SystemExit(main())
