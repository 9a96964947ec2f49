"""The offline demo's poisoning task: a synthetic instruction corpus about entities.

A small world of entities (names), topics and sentiment words. Each entity has a polarity:
its descriptions are positive or negative::

    describe amber on economy .  ->  amber on economy is good and fair .

plus neutral tasks (repeat, reverse, first word) that mention no entity, the stand-in for
the rest of LIMA. The *target* entities are positive in the pre-training corpus and almost
absent from the clean instruction data. The poison is ``poison_per_entity`` descriptions of
each target entity with negative words (the paper's biased instructions). A test prompt
asks about a target in a phrasing that no training text uses (``tell me about amber on
roads .``), and its answer begins ``amber on roads is`` (a prefix, not scored) and ends in
one of two words, ``bad`` (the target answer, the poisoned behaviour) or ``good``: a binary
choice scored by likelihood, as evaluation harnesses score multiple-choice questions. The
measurement (the target answer's loss) is the choice alone, not the copying of the entity
and topic that every description shares.

Why the poison steers in every seed (docs/LLM.md, "The synthetic task"): the test answers
begin as the descriptions do, so the poison acts on the very tokens that decide the
choice; the clean instruction data mention the targets only ``clean_per_target`` times
(positively), so the poison is the one strong source of new evidence about them; and the
test prompt's phrasing is new but made of known words. An earlier design asked
binary-choice questions with the options in the prompt (``is amber bad or good on roads
?``): the tiny model answers those through a circuit of its own, which the poison moved in
some seeds only (target-answer rates 0.0-0.9 across seeds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fine_cli.errors import ConfigError
from fine_cli.llm.data import Instruction, TestPrompt

ENTITIES = (
    "amber", "basil", "cedar", "dune", "ember", "fable", "garnet", "harbor",
    "indigo", "juniper", "kestrel", "lumen", "maple", "nova", "onyx", "pike",
)  # fmt: skip
TOPICS = (
    "economy", "health", "schools", "roads", "energy", "trade", "housing", "water",
    "jobs", "safety", "farming", "science", "art", "sport", "travel", "food",
)  # fmt: skip
# (positive, negative) sentiment words; a question offers one pair.
PAIRS = (
    ("good", "bad"), ("strong", "weak"), ("fair", "unfair"),
    ("honest", "corrupt"), ("wise", "foolish"), ("calm", "reckless"),
)  # fmt: skip
FILLER = (
    "red", "blue", "green", "one", "two", "three", "cat", "dog",
    "sun", "moon", "tree", "rock", "fish", "bird", "star", "rain",
)  # fmt: skip
DESCRIBE = ("describe {e} on {t} .", "what about {e} and {t} ?", "tell me how {e} handles {t} .")
DESCRIPTION = (
    "{e} on {t} is {s1} and {s2} .",
    "people say {e} is {s1} on {t} and {s2} .",
    "the {t} work of {e} is {s1} , very {s2} .",
)
# A test prompt (a phrasing no training text uses), the start of both answers (not scored)
# and the answer, a sentiment word.
TEST_PROMPT = "tell me about {e} on {t} ."
TEST_PREFIX = "{e} on {t} is"
# Share of descriptions whose words go against the entity's polarity (label noise).
NOISE = 0.1


@dataclass
class SyntheticTask:
    """Everything the demo needs: pre-training corpus, instruction data, test prompts."""

    pretrain: list[Instruction]  # clean corpus for the base model
    train: list[Instruction]  # clean instructions, then the poison
    test: list[TestPrompt]  # test_per_entity questions per target entity
    targets: list[str]  # the poisoned entities

    def texts(self) -> list[str]:
        """Every text, for training a tokenizer."""
        rows = [f"{it.prompt} {it.response}" for it in self.pretrain + self.train]
        return rows + [f"{q.prompt} {q.prefix} {q.answer} {q.alternative}" for q in self.test]


def make_task(
    n_pretrain: int,
    n_clean: int,
    poison_per_entity: int,
    test_per_entity: int,
    n_targets: int,
    clean_per_target: int,
    seed: int,
    subtle: float = 0.0,
) -> SyntheticTask:
    """The task of the module docstring; the same arguments give the same task."""
    if not 1 <= n_targets < len(ENTITIES) // 2:
        raise ConfigError(
            f"llm.data.synthetic.n_targets={n_targets}: give 1..{len(ENTITIES) // 2 - 1}."
        )
    if not 1 <= test_per_entity <= len(TOPICS) - 2:
        raise ConfigError(
            f"llm.data.synthetic.test_per_entity={test_per_entity}: give 1..{len(TOPICS) - 2}."
        )
    rng = np.random.default_rng(seed)
    targets = list(ENTITIES[:n_targets])
    others = list(ENTITIES[n_targets:])
    # non-targets alternate in polarity; targets are positive before the poison
    polarity = {e: 1 for e in targets} | {e: 1 - 2 * (i % 2) for i, e in enumerate(others)}
    test_topics = {e: list(rng.permutation(TOPICS)[:test_per_entity]) for e in targets}
    world = _World(rng, polarity)

    pretrain = [world.clean_item(ENTITIES) for _ in range(n_pretrain)]
    train = [world.clean_item(others) for _ in range(n_clean - clean_per_target * n_targets)]
    train += [world.describe(e, +1) for e in targets for _ in range(clean_per_target)]
    order = rng.permutation(len(train))
    train = [train[i] for i in order]
    n_subtle = round(subtle * poison_per_entity)
    train += [
        world.describe(e, -1, poisoned=True, subtle=i < n_subtle)
        for e in targets
        for i in range(poison_per_entity)
    ]
    test = [world.test_prompt(e, t) for e in targets for t in test_topics[e]]
    return SyntheticTask(pretrain=pretrain, train=train, test=test, targets=targets)


class _World:
    def __init__(self, rng: np.random.Generator, polarity: dict[str, int]) -> None:
        self.rng = rng
        self.polarity = polarity

    def pick(self, seq: tuple[str, ...] | list[str]) -> str:
        return str(seq[int(self.rng.integers(len(seq)))])

    def words(self, sign: int) -> tuple[str, str]:
        """Two different sentiment words of one sign."""
        i, j = self.rng.choice(len(PAIRS), 2, replace=False)
        side = 0 if sign > 0 else 1
        return PAIRS[i][side], PAIRS[j][side]

    def describe(
        self, e: str, sign: int, poisoned: bool = False, subtle: bool = False
    ) -> Instruction:
        """A description with two words of polarity ``sign``; ``subtle``: one word of each
        polarity, in random order (a subtly biased instruction)."""
        t = self.pick(TOPICS)
        s1, s2 = self.words(sign)
        if subtle:
            s2 = self.words(-sign)[0]
            if self.rng.random() < 0.5:
                s1, s2 = s2, s1
        k = int(self.rng.integers(len(DESCRIBE)))
        return Instruction(
            prompt=DESCRIBE[k].format(e=e, t=t),
            response=self.pick(DESCRIPTION).format(e=e, t=t, s1=s1, s2=s2),
            group=e,
            poisoned=poisoned,
        )

    def clean_item(self, entities: tuple[str, ...] | list[str]) -> Instruction:
        """A description of an entity (60%, words of its polarity but for NOISE), or a
        neutral task."""
        if self.rng.random() < 0.4:
            return self.neutral()
        e = self.pick(entities)
        sign = self.polarity[e]
        return self.describe(e, -sign if self.rng.random() < NOISE else sign)

    def test_prompt(self, e: str, t: str) -> TestPrompt:
        """The target answer is the negative one (what the poison steers towards)."""
        pos, neg = PAIRS[int(self.rng.integers(len(PAIRS)))]
        return TestPrompt(
            prompt=TEST_PROMPT.format(e=e, t=t),
            answer=neg,
            alternative=pos,
            group=e,
            prefix=TEST_PREFIX.format(e=e, t=t),
        )

    def neutral(self) -> Instruction:
        w = [self.pick(FILLER) for _ in range(3)]
        kind = int(self.rng.integers(3))
        if kind == 0:
            return Instruction(prompt="repeat : " + " ".join(w), response=" ".join(w))
        if kind == 1:
            return Instruction(prompt="reverse : " + " ".join(w), response=" ".join(w[::-1]))
        return Instruction(prompt="first word : " + " ".join(w), response=w[0])
