"""DVC stage `register` (all logic in semknobs.stages.register)."""

from semknobs.stage import stage_cli
from semknobs.stages import register

main = stage_cli(register)

if __name__ == "__main__":
    raise SystemExit(main())
