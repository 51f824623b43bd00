"""DVC stage `train_regressor` (all logic in semknobs.stages.train_regressor)."""

from semknobs.stage import stage_cli
from semknobs.stages import train_regressor

main = stage_cli(train_regressor)

if __name__ == "__main__":
    raise SystemExit(main())
