"""DVC stage `tune_attgan` (all logic in semknobs.stages.tune_attgan)."""

from semknobs.stage import stage_cli
from semknobs.stages import tune_attgan

main = stage_cli(tune_attgan)

if __name__ == "__main__":
    raise SystemExit(main())
