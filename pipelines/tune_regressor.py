"""DVC stage `tune_regressor` (all logic in semknobs.stages.tune_regressor)."""

from semknobs.stage import stage_cli
from semknobs.stages import tune_regressor

main = stage_cli(tune_regressor)

if __name__ == "__main__":
    raise SystemExit(main())
