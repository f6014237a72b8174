"""The prompts of the prefix-caching lab, built at run time: a chatbot, RAG over shared documents, parallel sampling.

Prefix caching pays when requests start with the same tokens. Three places where they do:
* chatbot — every request opens with the same long system prompt (instructions and tool definitions) and ends
  with its own short question: after the first request, all but the question is found cached;
* RAG — a request carries retrieved documents, then its question. The same documents in the same order share
  everything before the question; in another order they share only what comes before the first document that
  differs, because block j is found by the hash of everything before it, not by its own content;
* parallel sampling — one prompt, n samples: the prompt is prefilled once and its blocks shared n ways.

Nothing third-party is stored: the system prompt and questions are written here, and the documents are
docstrings of standard-library modules, read with inspect.getdoc when a scenario is built.
"""
from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass

# --- the chatbot -------------------------------------------------------------------------------------------

ASSISTANT_INSTRUCTIONS = """\
You are Quill, the chat assistant of the Millbrook Public Library. You help members and visitors with the \
catalog, their accounts, opening hours, rooms and events.

How to work:
- Be brief and friendly: most answers fit in two or three sentences.
- Use a tool whenever the answer depends on live data: the catalog, an account, opening hours or events. \
Never guess a due date, a fee or an opening time.
- To call a tool, answer with one JSON object {"tool": <name>, "arguments": {...}} and nothing else. The result \
comes back in the next message; then answer in plain words.
- Ask for the library card number before any tool that reads or changes an account, and never repeat it in \
full: show only its last four digits.
- If a title is not in the catalog, offer an interlibrary loan.

House rules:
- Members may borrow up to 30 items at once. Books are lent for 21 days, films and games for 7 days.
- A loan can be renewed twice, unless another member has placed a hold on the item.
- Holds wait on the pickup shelf for 7 days after the member is notified.
- Late fees are 10 cents a day per item, at most 5 dollars an item. Children's cards have no late fees.
- Lost items are charged at replacement cost, refunded if the item turns up within 90 days.
- The makerspace (3D printers, sewing machines, a laser cutter) needs a safety session first.
- Branches: Central (open daily), Riverside and Oak Hill (closed on Mondays).

Tools, as JSON schemas:
"""

# (name, what it does, [(parameter, JSON type, meaning or None when the name says it, required)])
TOOLS = [
    ("search_catalog", "Find books, films, music and games; says which branches have a copy on the shelf.",
     [("query", "string", "words to search for", True),
      ("format", "string", "book, ebook, audiobook, film or game", False)]),
    ("place_hold", "Reserve a catalog item; it is sent to the pickup branch when a copy is free.",
     [("card_number", "string", None, True),
      ("item_id", "string", "the id returned by search_catalog", True),
      ("pickup_branch", "string", None, True)]),
    ("renew_loans", "Renew a member's loans where the rules allow it.",
     [("card_number", "string", None, True),
      ("item_ids", "array", "ids to renew; every renewable loan if omitted", False)]),
    ("account_summary", "A member's loans with their due dates, holds, and any fees owed.",
     [("card_number", "string", None, True)]),
    ("branch_hours", "Opening hours of a branch on a date, holiday closures included.",
     [("branch", "string", None, True),
      ("date", "string", "YYYY-MM-DD; today if omitted", False)]),
    ("list_events", "Upcoming story times, workshops, book clubs and talks.",
     [("branch", "string", "every branch if omitted", False),
      ("audience", "string", "children, teens, adults or all", False)]),
    ("book_room", "Reserve a study or meeting room for up to 3 hours.",
     [("card_number", "string", None, True),
      ("branch", "string", None, True),
      ("start", "string", "YYYY-MM-DD HH:MM", True),
      ("hours", "number", None, True)]),
    ("request_interlibrary_loan", "Ask a partner library to lend a title Millbrook does not own.",
     [("card_number", "string", None, True),
      ("title", "string", None, True),
      ("author", "string", None, False)]),
]

QUESTIONS = [
    "Is the Central branch open this Sunday?",
    "Do you have a copy of The Hobbit on the shelf?",
    "How many books can I borrow at the same time?",
    "Can I renew my loans? My card number is 2231004477815520.",
    "What is the late fee for a film?",
    "Are there any story times for toddlers next week?",
    "I'd like to book a study room at Riverside tomorrow afternoon.",
    "Can you recommend a novel like The Martian?",
    "How do I get to use the laser cutter?",
    "What do I owe on my account?",
    "Could you put a hold on a vegetarian cookbook for me?",
    "You don't have the book I need. Can another library lend it?",
    "How long will my hold wait for me?",
    "Do you lend board games?",
    "Is there a book club for teenagers?",
    "Why is Oak Hill closed today?",
    "Do children pay late fees?",
    "I lost a library book. What happens now?",
    "Can I borrow audiobooks on my phone?",
    "When does Riverside close on New Year's Eve?",
]


@dataclass(frozen=True)
class Scenario:
    """Requests as plain data: the notebook draws them, the benchmark times them."""
    name: str
    labels: list[str]  # one line each, for tables
    texts: list[str]  # the rendered prompts (chat template applied)
    prompt_ids: list[list[int]]

    def __post_init__(self) -> None:
        assert len(self.labels) == len(self.texts) == len(self.prompt_ids) > 0

    def __len__(self) -> int:
        return len(self.prompt_ids)


def _property(kind: str, meaning: str | None) -> dict:
    return {"type": kind} if meaning is None else {"type": kind, "description": meaning}


def tool_schemas() -> list[dict]:
    """TOOLS as the JSON-schema function definitions chat models are usually given."""
    return [{"name": name, "description": description,
             "parameters": {"type": "object",
                            "properties": {p: _property(kind, meaning) for p, kind, meaning, _ in params},
                            "required": [p for p, _, _, required in params if required]}}
            for name, description, params in TOOLS]


def chatbot_system_prompt() -> str:
    """The shared prefix of every chatbot request: instructions, then the tools as JSON (~1,000 tokens)."""
    return ASSISTANT_INSTRUCTIONS + "\n".join(json.dumps(tool) for tool in tool_schemas())


def chatbot_scenario(tokenizer, num_requests: int = 16) -> Scenario:
    """`num_requests` chats, each the system prompt plus one of the distinct QUESTIONS."""
    if not 1 <= num_requests <= len(QUESTIONS):
        raise ValueError(f"the chatbot has {len(QUESTIONS)} distinct questions; asked for {num_requests} requests")
    system = chatbot_system_prompt()
    texts = [tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}])
             for q in QUESTIONS[:num_requests]]
    return Scenario("chatbot", list(QUESTIONS[:num_requests]), texts, [tokenizer.encode(t) for t in texts])


# --- retrieval over shared documents (RAG) ----------------------------------------------------------------

# modules whose docstrings are long on every CPython ≥ 3.10
DOCUMENT_MODULES = ("json", "csv", "statistics", "heapq", "itertools", "collections")
DOCUMENT_TOKENS = 200  # each document is clipped, at a line break, to at most this many tokens

RAG_INSTRUCTIONS = ("Answer questions about Python's standard library from the numbered documents in the "
                    "user's message. Name the document you used, and say so when the documents do not answer.")

# (documents in retrieval order, question, how this request relates to the ones before it)
RAG_REQUESTS = [
    (("json", "csv", "statistics"), "How do I turn a Python dict into a JSON string?",
     "json, csv, statistics: first time"),
    (("json", "csv", "statistics"), "Which module reads comma separated files?",
     "json, csv, statistics: same order"),
    (("json", "statistics", "csv"), "Which function gives the median of some numbers?",
     "json, statistics, csv: 2nd and 3rd swapped"),
    (("statistics", "csv", "json"), "Can json write straight to an open file?",
     "statistics, csv, json: reversed"),
    (("heapq", "itertools"), "How do I keep a list as a priority queue?",
     "heapq, itertools: other documents"),
    (("heapq", "itertools", "collections"), "Which container counts how often items occur?",
     "heapq, itertools, collections: one document added"),
]


def clip_to_tokens(text: str, tokenizer, max_tokens: int) -> str:
    """The longest run of whole lines from the start of `text` that encodes to at most `max_tokens` tokens
    (at least the first line, cut by tokens if it alone is too long)."""
    lines = text.splitlines()
    kept = 0
    while kept < len(lines) and len(tokenizer.encode("\n".join(lines[:kept + 1]))) <= max_tokens:
        kept += 1
    if kept == 0:
        return tokenizer.decode(tokenizer.encode(lines[0])[:max_tokens])
    return "\n".join(lines[:kept]).strip()


def stdlib_documents(tokenizer, modules=DOCUMENT_MODULES, max_tokens: int = DOCUMENT_TOKENS) -> dict[str, str]:
    """module name → its docstring (inspect.getdoc, read now), clipped to `max_tokens` tokens."""
    documents = {}
    for name in modules:
        doc = inspect.getdoc(importlib.import_module(name))
        if not doc:
            raise RuntimeError(f"module {name} has no docstring here (is Python running with -OO?)")
        documents[name] = clip_to_tokens(doc, tokenizer, max_tokens)
    return documents


def rag_user_message(documents: dict[str, str], names, question: str) -> str:
    """The retrieved documents, numbered in retrieval order, then the question."""
    parts = [f"[{i}] {name}\n{documents[name]}" for i, name in enumerate(names, start=1)]
    return "Documents:\n\n" + "\n\n".join(parts) + f"\n\nQuestion: {question}"


def rag_scenario(tokenizer, num_requests: int | None = None, max_tokens: int = DOCUMENT_TOKENS) -> Scenario:
    """The first `num_requests` of RAG_REQUESTS (all by default): the same documents in changing orders."""
    num_requests = len(RAG_REQUESTS) if num_requests is None else num_requests
    if not 1 <= num_requests <= len(RAG_REQUESTS):
        raise ValueError(f"the RAG scenario has {len(RAG_REQUESTS)} requests; asked for {num_requests}")
    documents = stdlib_documents(tokenizer, max_tokens=max_tokens)
    chosen = RAG_REQUESTS[:num_requests]
    texts = [tokenizer.apply_chat_template([{"role": "system", "content": RAG_INSTRUCTIONS},
                                            {"role": "user", "content": rag_user_message(documents, names, question)}])
             for names, question, _ in chosen]
    return Scenario("rag", [label for _, _, label in chosen], texts, [tokenizer.encode(t) for t in texts])


# --- parallel sampling -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingScenario:
    """One prompt and how many samples to draw from it (the engine prefills once and forks the rest)."""
    text: str
    prompt_ids: list[int]
    num_samples: int


SAMPLING_QUESTION = "Write a short poem about a lighthouse keeper who collects seashells."


def parallel_sampling_scenario(tokenizer, num_samples: int = 4) -> SamplingScenario:
    if num_samples < 2:
        raise ValueError(f"parallel sampling needs at least 2 samples, got {num_samples}")
    text = tokenizer.apply_chat_template(SAMPLING_QUESTION)
    return SamplingScenario(text, tokenizer.encode(text), num_samples)


# --- what a prefix cache can find --------------------------------------------------------------------------

def common_prefix_len(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def reusable_prefix_tokens(prompt_ids: list[list[int]], block_size: int = 16) -> list[int]:
    """Tokens of each prompt a prefix cache finds cached when the prompts run one after another and nothing is
    evicted: its longest common prefix with an earlier prompt, cut to whole blocks, leaving ≥ 1 token to compute."""
    found = []
    for i, ids in enumerate(prompt_ids):
        shared = max((common_prefix_len(ids, earlier) for earlier in prompt_ids[:i]), default=0)
        found.append(min(shared, len(ids) - 1) // block_size * block_size)
    return found
