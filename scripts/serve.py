"""Start the reference server: `python scripts/serve.py --port 8001` (same flags as the module)."""

from torch_student_env.server.__main__ import main

if __name__ == "__main__":
    main()
