"""DVC stage `train_attgan` (all logic in semknobs.stages.train_attgan)."""

from semknobs.stage import stage_cli
from semknobs.stages import train_attgan

main = stage_cli(train_attgan)

if __name__ == "__main__":
    raise SystemExit(main())
