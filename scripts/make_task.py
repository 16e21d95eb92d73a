"""Write the local lm-eval task shipped in tasks/mv4-nextline/ (multiple choice: the next line of Python code).

    python scripts/make_task.py          # rewrites tasks/mv4-nextline/mv4_nextline.jsonl (deterministic)

Text: tests/fixtures/eval.txt, the held-out standard-library modules no fixture was trained on. Each item
is CONTEXT_LINES lines of code and four candidates for the line that follows: the true line and three
copies of it with its words (identifiers, keywords, numbers) put in another order. Every candidate has the
same characters, so only the model's sense of what code looks like here picks the right one; a tiny model
trained on code gets most of them, a damaged one fewer. Seeded: the same file every run.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "tests" / "fixtures" / "eval.txt"
OUT = REPO / "tasks" / "mv4-nextline" / "mv4_nextline.jsonl"
ITEMS, CONTEXT_LINES, CHOICES, SEED = 300, 12, 4, 19
WORD = re.compile(r"\w+|\W")


def _usable(line: str) -> bool:
    body = line.strip()
    return len(body) >= 12 and not body.startswith("#")


def _shuffled(line: str, rng: random.Random) -> list[str]:
    """Up to CHOICES - 1 distinct reorderings of the words of ``line`` (everything else stays in place)."""
    pieces = WORD.findall(line)
    slots = [k for k, piece in enumerate(pieces) if piece[0].isalnum() or piece[0] == "_"]
    out: set[str] = set()
    for _ in range(50):
        order = [pieces[k] for k in slots]
        rng.shuffle(order)
        new = list(pieces)
        for k, word in zip(slots, order):
            new[k] = word
        candidate = "".join(new)
        if candidate != line:
            out.add(candidate)
        if len(out) == CHOICES - 1:
            break
    return sorted(out)


def make_items() -> list[dict]:
    lines = TEXT.read_text(encoding="utf-8").splitlines()
    rng = random.Random(SEED)
    starts = [i for i in range(CONTEXT_LINES, len(lines)) if _usable(lines[i])
              and len(_shuffled(lines[i], random.Random(i))) == CHOICES - 1]
    items = []
    for i in sorted(rng.sample(starts, ITEMS)):
        choices = _shuffled(lines[i], rng) + [lines[i]]
        rng.shuffle(choices)
        context = "\n".join(lines[i - CONTEXT_LINES: i]) + "\n"
        items.append({"id": len(items), "context": context, "choices": choices, "label": choices.index(lines[i])})
    return items


if __name__ == "__main__":
    OUT.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in make_items()), encoding="utf-8")
    print(f"wrote {OUT} ({ITEMS} items)")
