"""The scheduler: which sequences run in the next step, and how many of their tokens.

Every step it forms one batch under two limits — `max_num_seqs` sequences and `max_num_batched_tokens` tokens:
1. running sequences first, in admission order: one token each when decoding, a budget-sized chunk of the rest
   of their context when prefilling (chunked prefill: a long prompt takes several steps, beside others' decode);
2. when the pool cannot give a running sequence the blocks it needs, the most recently admitted running
   sequence is preempted: its blocks are freed and it goes back to the front of the waiting queue. Then either
   *recompute* — it later prefills its prompt and output so far again, with prefix-cache hits where the layout
   has them — or *swap* — its K/V was first copied to the tier below the pool, and is copied back when it is
   admitted again (one tier write and one tier read a step at most, however many sequences move).
   preemption="auto" chooses per sequence from measured costs (kvlab.engine.offload); a tier fault (full,
   corrupt, gone) is logged and the sequence is recomputed instead: nothing is lost;
3. then, if nothing was preempted, waiting sequences that have arrived, first come first served, while
   sequences, budget and blocks last.
policy="static" admits only when nothing is running (request-level batching: a batch runs until its last
sequence finishes, then the next one is formed), as the baselines of the Orca paper did.

The scheduler owns no allocator: it asks the cache (blocks_free, blocks_to_grow, blocks_to_add).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..cache import KVCache, blocks_for
from ..cache.swap import read_in, reserve_in, stage_out, write_out
from ..cache.tier import TierError
from .offload import PREEMPTION_MODES, PreemptionChoice, choose_preemption
from .request import Sequence, Status

POLICIES = ("continuous", "static")


@dataclass
class ScheduledBatch:
    chunks: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, new tokens this step)
    preempted: list[Sequence] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)
    choices: list[PreemptionChoice] = field(default_factory=list)  # one per preempted sequence: swap or recompute, why
    swapped_in: list[Sequence] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # tier faults met this step (each recovered by recomputing)
    staged: list = field(default_factory=list)  # swap victims' K/V, out of the pool, written to the tier in one put
    reserved: list = field(default_factory=list)  # SwappedOut of swapped_in, read back from the tier in one get
    lost: list[Sequence] = field(default_factory=list)  # resumed, but the tier lost their K/V: back to waiting
    lookahead: dict[int, int] = field(default_factory=dict)  # seq_id → draft slots reserved (speculation)

    @property
    def num_tokens(self) -> int:
        return sum(count for _, count in self.chunks) + sum(self.lookahead.values())


class Scheduler:
    def __init__(self, cache: KVCache, max_num_seqs: int, max_num_batched_tokens: int, policy: str = "continuous",
                 preemption: str = "recompute", tier=None, costs=None, lookahead: int = 0):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if preemption not in PREEMPTION_MODES:
            raise ValueError(f"unknown preemption {preemption!r}; choose one of {', '.join(PREEMPTION_MODES)}")
        assert preemption == "recompute" or tier is not None, "swap preemption needs a tier"
        assert preemption != "auto" or costs is not None, "auto preemption needs measured costs"
        self.cache = cache
        self.preemption, self.tier, self.costs = preemption, tier, costs
        self.swapped: dict[int, object] = {}  # seq_id → its SwappedOut while its K/V is in the tier
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.policy = policy
        self.lookahead = lookahead  # speculation: up to this many draft tokens per decoding sequence and step
        self.waiting: deque[Sequence] = deque()  # arrival order; preempted sequences go back to the front
        self.running: list[Sequence] = []  # admission order: the last one is preempted first

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; the waiting queue stays in arrival order (preempted ones stay in front)."""
        assert seq.status is Status.WAITING
        position = len(self.waiting)
        while position > 0 and self.waiting[position - 1].arrival_s > seq.arrival_s \
                and self.waiting[position - 1].first_scheduled_s is None:
            position -= 1
        self.waiting.insert(position, seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def next_arrival_s(self) -> float | None:
        return self.waiting[0].arrival_s if self.waiting else None

    # --- one step ---------------------------------------------------------------------------------------
    def schedule(self, now_s: float) -> ScheduledBatch:
        batch = self._form(now_s)
        while batch.lost and not batch.chunks:  # the tier lost all it was to bring back: form it again (recompute)
            batch = self._form(now_s, batch.faults)
        return batch

    def _form(self, now_s: float, faults: tuple[str, ...] = ()) -> ScheduledBatch:
        batch = ScheduledBatch(faults=list(faults))
        budget = self.max_num_batched_tokens
        promised = 0  # blocks the chunks scheduled so far will take when the step begins
        admitting = self.policy == "continuous" or not self.running
        queue = list(self.running)
        while queue and budget > 0:
            seq = queue.pop(0)
            count = self._chunk(seq, budget)
            if count == 0:
                continue
            while self.cache.blocks_to_grow(seq.seq_id, count) > self._blocks_free() - promised:
                victim = queue.pop() if queue else seq  # the most recently admitted one not yet scheduled
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                extra = self._lookahead(seq, count, budget - count, promised)
                promised += self.cache.blocks_to_grow(seq.seq_id, count + extra)
                batch.chunks.append((seq, count))
                budget -= count + extra
                if extra:
                    batch.lookahead[seq.seq_id] = extra
        if batch.preempted or not admitting:
            self._write_swapped_out(batch)
            self._check(batch)
            return batch
        while self.waiting and len(self.running) < self.max_num_seqs and self.cache.can_add_sequence():
            seq = self.waiting[0]
            if seq.arrival_s > now_s or (budget == 0 and self.policy == "continuous"):
                break
            swapped = self.swapped.get(seq.seq_id)
            cached = swapped.length if swapped else self.cache.blocks_to_add(seq.token_ids, 0)[0]
            count = self._chunk(seq, budget, cached)
            if count == 0 and self.policy == "continuous":
                break
            blocks = (blocks_for(cached + count, self.cache.block_size) if swapped
                      else self.cache.blocks_to_add(seq.token_ids, count)[1])
            if blocks > self._blocks_free() - promised:
                break
            self.waiting.popleft()
            if swapped:  # fresh blocks now; their K/V comes back from the tier with the others' at the end
                reserve_in(self.cache, seq.seq_id, seq.max_kv_tokens, swapped)
                batch.reserved.append(self.swapped.pop(seq.seq_id))
                batch.swapped_in.append(seq)
            else:
                got = self.cache.add_sequence(seq.seq_id, seq.max_kv_tokens, seq.token_ids)
                if got != cached:  # only a tier fault loses promised prefix blocks (now dropped): count it again
                    fault = getattr(getattr(self.cache, "offload", None), "last_fault", None)
                    assert got < cached and fault, f"the prefix cache served {got} tokens, blocks_to_add said {cached}"
                    self.cache.free_sequence(seq.seq_id)
                    self.waiting.appendleft(seq)  # popped above
                    batch.faults.append(f"seq {seq.seq_id}: {fault}; its prefix is computed instead")
                    continue
            if seq.first_scheduled_s is None:
                seq.first_scheduled_s = now_s
                seq.cached_prompt_tokens = cached
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.admitted.append(seq)
            if count:
                promised += self.cache.blocks_to_grow(seq.seq_id, count)  # a hit's blocks were taken back just now
                batch.chunks.append((seq, count))
                budget -= count
        self._read_swapped_in(batch)
        self._check(batch)
        return batch

    def _chunk(self, seq: Sequence, budget: int, cached: int | None = None) -> int:
        """New tokens `seq` can take this step: the rest of its context up to the budget ("none" recomputes the
        whole sequence every step, so it runs whole or not at all)."""
        cached = self.cache.num_cached(seq.seq_id) if cached is None else cached
        uncached = len(seq.token_ids) - cached
        assert uncached >= 1, f"sequence {seq.seq_id} has nothing to compute"
        if not self.cache.keeps_kv:
            return uncached if uncached <= budget else 0
        return min(uncached, budget)

    def _lookahead(self, seq: Sequence, count: int, budget: int, promised: int) -> int:
        """Draft slots for a decoding sequence: up to `lookahead`, within the token budget, what it may still
        generate after this step's token, and the blocks left."""
        if not (self.lookahead and seq.prefilled and count == 1):
            return 0
        extra = min(self.lookahead, budget, seq.max_new_tokens - seq.num_generated - 1)
        while extra > 0 and self.cache.blocks_to_grow(seq.seq_id, count + extra) > self._blocks_free() - promised:
            extra -= 1
        return max(extra, 0)

    def _blocks_free(self) -> int:
        free = self.cache.blocks_free()
        return free if free is not None else 1 << 62

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Free every block (its K/V gathered for the tier first when swapping), back to the front of the waiting
        queue, tokens kept."""
        choice = choose_preemption(self.preemption, self.cache, seq.seq_id, self.costs)
        if choice.mode == "swap":
            batch.staged.append(stage_out(self.cache, seq.seq_id))
        else:
            self.cache.free_sequence(seq.seq_id)
            seq.prefilled = False
        self.running.remove(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)
        batch.choices.append(choice)

    def _write_swapped_out(self, batch: ScheduledBatch) -> None:
        """The step's swap victims to the tier in one put; if the tier refuses, they are recomputed instead (their
        blocks are already free: nothing else to undo)."""
        if not batch.staged:
            return
        try:
            self.swapped |= {s.seq_id: s for s in write_out(batch.staged, self.tier)}
        except TierError as fault:
            victims = {s.seq_id for s in batch.staged}
            for seq in batch.preempted:
                if seq.seq_id in victims:
                    seq.prefilled = False
            batch.faults.append(f"seq(s) {', '.join(map(str, sorted(victims)))} swap-out: {fault}")
            batch.choices = [PreemptionChoice(c.seq_id, "recompute", f"the tier refused its blocks ({fault})")
                             if c.seq_id in victims else c for c in batch.choices]
        batch.staged = []

    def _read_swapped_in(self, batch: ScheduledBatch) -> None:
        """The step's resumed sequences' K/V back from the tier in one get; one the tier lost is taken out of the
        step and goes back to the front of the queue, to be recomputed."""
        if not batch.reserved:
            return
        failed = read_in(self.cache, batch.reserved, self.tier)
        length = {s.seq_id: s.length for s in batch.reserved}
        lost = [seq for seq in batch.swapped_in if seq.seq_id in failed]
        for seq in reversed(lost):  # back to the front in their order
            batch.faults.append(f"seq {seq.seq_id} swap-in: {failed[seq.seq_id]}; recomputing its "
                                f"{length[seq.seq_id]} tokens")
            seq.prefilled = False
            seq.status = Status.WAITING
            self.running.remove(seq)
            batch.admitted.remove(seq)
            batch.swapped_in.remove(seq)
            batch.chunks = [(s, n) for s, n in batch.chunks if s is not seq]
            batch.lost.append(seq)
            self.waiting.appendleft(seq)
        batch.reserved = []

    def _check(self, batch: ScheduledBatch) -> None:
        assert batch.num_tokens <= self.max_num_batched_tokens, "token budget exceeded"
        assert len(self.running) <= self.max_num_seqs, "max_num_seqs exceeded"
        assert len({s.seq_id for s, _ in batch.chunks}) == len(batch.chunks), "a sequence scheduled twice"
        assert all(s.status is Status.RUNNING for s, _ in batch.chunks)
        assert not {s.seq_id for s in self.waiting} & {s.seq_id for s in self.running}, "a sequence in two queues"
        assert set(self.swapped) <= {s.seq_id for s in self.waiting}, "a swapped-out sequence that is not waiting"

    # --- after the step ------------------------------------------------------------------------------
    def finish(self, seq: Sequence) -> None:
        self.cache.free_sequence(seq.seq_id)
        self.running.remove(seq)
        seq.status = Status.FINISHED

    def insert_running_after(self, parent: Sequence, children: list[Sequence]) -> None:
        """Forked samples run right after their parent (parallel sampling)."""
        at = self.running.index(parent) + 1
        self.running[at:at] = children
