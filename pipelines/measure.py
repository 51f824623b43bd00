"""DVC stage `measure` (all logic in semknobs.stages.measure)."""

from semknobs.stage import stage_cli
from semknobs.stages import measure

main = stage_cli(measure)

if __name__ == "__main__":
    raise SystemExit(main())
