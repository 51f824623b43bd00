"""DVC stage `tile` (all logic in semknobs.stages.tile)."""

from semknobs.stage import stage_cli
from semknobs.stages import tile

main = stage_cli(tile)

if __name__ == "__main__":
    raise SystemExit(main())
