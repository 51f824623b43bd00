"""DVC stage `split` (all logic in semknobs.stages.split)."""

from semknobs.stage import stage_cli
from semknobs.stages import split

main = stage_cli(split)

if __name__ == "__main__":
    raise SystemExit(main())
