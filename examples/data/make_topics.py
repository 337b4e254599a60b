"""Writes the small 4-topic headline dataset the text examples use (deterministic).

No labelled text dataset can be downloaded on an offline machine, so the text demo
fine-tunes the real pretrained all-MiniLM-L6-v2 on headlines composed from templates
and topic vocabularies. About 15% of headlines borrow a word from another topic, so a
bag-of-words shortcut is not enough for a perfect score.

    python examples/data/make_topics.py        # rewrites examples/data/topics/*.csv
"""

import csv
import random
from pathlib import Path

TOPICS = {
    "sports": {
        "who": [
            "the striker",
            "the home side",
            "the veteran goalkeeper",
            "the rookie guard",
            "the defending champions",
            "the national team",
            "the tennis star",
            "the coach",
            "the underdogs",
            "the captain",
        ],
        "did": [
            "scores twice in",
            "is benched before",
            "wins a thriller in",
            "loses narrowly in",
            "sets a record in",
            "is injured during",
            "celebrates victory after",
            "signs a new contract before",
            "returns from injury for",
            "is sent off in",
        ],
        "what": [
            "the cup final",
            "the derby",
            "the play-off game",
            "the season opener",
            "the marathon",
            "the championship match",
            "the semi-final",
            "extra time",
            "the penalty shoot-out",
            "the grand slam",
        ],
    },
    "business": {
        "who": [
            "the retailer",
            "the central bank",
            "shareholders",
            "the startup",
            "the airline",
            "investors",
            "the carmaker",
            "the chief executive",
            "the chipmaker",
            "analysts",
        ],
        "did": [
            "reports record profits in",
            "cuts jobs ahead of",
            "raises prices after",
            "announces a merger during",
            "warns of losses in",
            "shares fall after",
            "beats forecasts in",
            "expands overseas after",
            "delays its listing until",
            "lowers guidance for",
        ],
        "what": [
            "the third quarter",
            "the annual meeting",
            "the earnings call",
            "the interest rate decision",
            "the holiday season",
            "the trade talks",
            "the fiscal year",
            "the stock market rally",
            "the bond sale",
            "the audit",
        ],
    },
    "science": {
        "who": [
            "astronomers",
            "the research team",
            "biologists",
            "the space agency",
            "physicists",
            "climate scientists",
            "the laboratory",
            "geologists",
            "chemists",
            "the telescope",
        ],
        "did": [
            "discover a new",
            "publish a study on",
            "observe an unusual",
            "sequence the genome of",
            "simulate a",
            "measure the mass of",
            "find evidence of",
            "launch a probe toward",
            "map the surface of",
            "identify a protein in",
        ],
        "what": [
            "exoplanet",
            "bacteria colony",
            "black hole",
            "deep-sea species",
            "quantum material",
            "ancient glacier",
            "distant galaxy",
            "fossil record",
            "gravitational wave",
            "volcanic crater",
        ],
    },
    "world": {
        "who": [
            "the prime minister",
            "the parliament",
            "protesters",
            "the foreign minister",
            "the president",
            "election officials",
            "the opposition leader",
            "diplomats",
            "the united nations",
            "the governor",
        ],
        "did": [
            "calls for talks on",
            "votes against",
            "rallies in support of",
            "signs a treaty on",
            "condemns",
            "announces sanctions over",
            "postpones the vote on",
            "visits the region after",
            "resigns over",
            "negotiates a ceasefire in",
        ],
        "what": [
            "the border dispute",
            "the new constitution",
            "the refugee crisis",
            "the peace agreement",
            "the disputed election",
            "the reform bill",
            "the embassy closure",
            "the regional summit",
            "the budget deadlock",
            "the coalition deal",
        ],
    },
}
FORMS = [
    "{who} {did} {what}",
    "report: {who} {did} {what}",
    "{who} {did} {what}, sources say",
    "breaking: {who} {did} {what}",
    "{who} {did} {what} on tuesday",
]


def headline(rng: random.Random, topic: str) -> str:
    parts = {k: rng.choice(v) for k, v in TOPICS[topic].items()}
    if rng.random() < 0.15:  # borrow one slot from another topic
        other = rng.choice([t for t in TOPICS if t != topic])
        slot = rng.choice(["who", "what"])
        parts[slot] = rng.choice(TOPICS[other][slot])
    return rng.choice(FORMS).format(**parts).capitalize()


def write(path: Path, rows: list[tuple[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    tmp.replace(path)


def main(out: Path = Path(__file__).parent / "topics", n_train: int = 1600, n_test: int = 400):
    rng = random.Random(0)
    labels = list(TOPICS)
    rows = [(headline(rng, t), t) for t in (labels[i % 4] for i in range(n_train + n_test))]
    rng.shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "train.csv", rows[:n_train])
    write(out / "test.csv", rows[n_train:])


if __name__ == "__main__":
    main()
