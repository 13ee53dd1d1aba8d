"""Write the synthetic review task (train.csv, test.csv) that configs/text.yaml reads.

    python scripts/make_text_task.py data/reviews
"""

import sys
from pathlib import Path

from kdtemp.data.synthetic_text import write_reviews

if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "data/reviews")
    for path in write_reviews(root):
        print(f"wrote {path}")
