"""DVC stage `synthesize` (all logic in semknobs.stages.synthesize)."""

from semknobs.stage import stage_cli
from semknobs.stages import synthesize

main = stage_cli(synthesize)

if __name__ == "__main__":
    raise SystemExit(main())
