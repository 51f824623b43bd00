"""DVC stage `evaluate_attgan` (all logic in semknobs.stages.evaluate_attgan)."""

from semknobs.stage import stage_cli
from semknobs.stages import evaluate_attgan

main = stage_cli(evaluate_attgan)

if __name__ == "__main__":
    raise SystemExit(main())
