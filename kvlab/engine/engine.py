"""The serving engine: one loop — schedule, run, postprocess — over a real model and a real cache.

    engine = Engine(model, tokenizer, cache, max_num_seqs=8, max_num_batched_tokens=512)
    engine.add_request(Request("The KV cache", max_new_tokens=32))
    while engine.has_unfinished():
        engine.step()          # one StepRecord appended to engine.steps
    result = engine.result()   # per request: tokens, text, TTFT, TPOT, ITL, queue time, preemptions

`kvlab.generate` and `kvlab.serve` are clients of this loop; there is no other place where a step is formed.
"""
from __future__ import annotations

import time

import torch

from ..cache import KVCache, PoolExhausted
from ..cache.swap import check_can_swap
from ..cache.tier import BlockTier
from ..checks import positive_int
from .clock import StepClock, WallClock
from .metrics import RequestOutput, ServeResult, StepRecord
from .offload import PREEMPTION_MODES, OffloadCosts, measure_offload_costs
from .request import Request, Sequence, Status
from ..spec import Draft, SpecRow, SpecStats, accept_greedy, accept_sampled, check_drafter_options, make_drafter
from .runner import run_chunks, sync, verify_pass
from .sampling import check_sampling_args, sample_next, sampling_probs
from .scheduler import POLICIES, Scheduler


def encode_prompt(tokenizer, prompt: str | list[int], chat: bool, config, index: int) -> list[int]:
    """Text (chat template applied on request) or token ids → token ids, checked against the vocabulary."""
    if isinstance(prompt, str):
        ids = tokenizer.encode(tokenizer.apply_chat_template(prompt) if chat else prompt)
    else:
        ids = [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < config.vocab_size]
        if bad:
            raise ValueError(f"prompt {index} has token id {bad[0]}, outside the vocabulary 0..{config.vocab_size - 1}")
    if not ids:
        raise ValueError(f"prompt {index} is empty")
    if len(ids) > config.context_len:
        raise ValueError(f"prompt {index} has {len(ids)} tokens, longer than the model's context of {config.context_len}")
    return ids


def default_tier(cache) -> BlockTier:
    """The tier below a pool when none is given: as many blocks as the pool, in pinned host memory on CUDA, in a
    memory-mapped file in a temporary folder on a machine whose pool already lives in host memory."""
    kind = "pinned" if cache.device.type == "cuda" else "file"
    return BlockTier(cache.block_bytes(), capacity_blocks=cache.allocator.num_blocks, kind=kind)


class Engine:
    def __init__(self, model, tokenizer, cache: KVCache, max_num_seqs: int = 8, max_num_batched_tokens: int = 2048,
                 policy: str = "continuous", temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 chat: bool = False, stop_at_eos: bool = True, stop_token_ids: list[int] | None = None,
                 clock: WallClock | StepClock | None = None, on_step=None, preemption: str = "recompute",
                 swap_tier=None, offload_costs: OffloadCosts | None = None, speculative=None,
                 num_speculative_tokens: int = 4, speculative_options: dict | None = None):
        positive_int("max_num_seqs", max_num_seqs)
        positive_int("max_num_batched_tokens", max_num_batched_tokens)
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if preemption not in PREEMPTION_MODES:
            raise ValueError(f"unknown preemption {preemption!r}; choose one of {', '.join(PREEMPTION_MODES)}")
        if preemption == "swap":
            check_can_swap(cache)
        check_sampling_args(temperature, top_p)
        if cache.device != model.device or cache.dtype != model.dtype:
            raise ValueError(f"the cache holds {cache.dtype} on {cache.device}, the model runs {model.dtype} on {model.device}")
        self.model, self.tokenizer, self.cache = model, tokenizer, cache
        swaps = preemption != "recompute" and getattr(cache, "can_swap", False)
        if swaps and swap_tier is None:
            swap_tier = default_tier(cache)
        if swaps and swap_tier.block_bytes != cache.block_bytes():
            raise ValueError(f"the swap tier stores blocks of {swap_tier.block_bytes} bytes, the pool's are "
                             f"{cache.block_bytes()}")
        if swaps and preemption == "auto" and offload_costs is None:
            offload_costs = measure_offload_costs(model, cache, swap_tier)
        self.tier, self.offload_costs = (swap_tier, offload_costs) if swaps else (None, None)
        self.temperature, self.top_p, self.chat = temperature, top_p, chat
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.drafter, self.spec_stats = self._drafter(speculative, num_speculative_tokens, speculative_options or {})
        self.scheduler = Scheduler(cache, max_num_seqs, max_num_batched_tokens, policy, preemption, self.tier,
                                   self.offload_costs, lookahead=num_speculative_tokens if self.drafter else 0)
        eos = [tokenizer.eos_token_id] if tokenizer is not None else [model.config.eos_token_id]
        self.stop_token_ids = set(stop_token_ids if stop_token_ids is not None else eos) if stop_at_eos else set()
        self.clock = clock if clock is not None else WallClock()
        self.on_step = on_step  # on_step(step_index, cache, running seq ids): after the forward, before frees
        self.sequences: list[Sequence] = []  # by seq_id
        self.steps: list[StepRecord] = []
        self._wall_s = 0.0

    def _drafter(self, speculative, k: int, options: dict):
        """The drafter and its stats, or (None, None) without speculation (then no draft option is taken)."""
        if speculative is None:
            if options:
                raise ValueError(f"speculative_options {sorted(options)} need speculative='ngram' or 'self'")
            return None, None
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < self.model.config.context_len:
            raise ValueError(f"num_speculative_tokens must be a whole number in 1..{self.model.config.context_len - 1}"
                             f", got {k!r}")
        if not self.cache.can_rollback:
            raise ValueError(f"speculative decoding rolls back rejected drafts, which the {self.cache.name!r} layout "
                             f"cannot do; use cache='contiguous', 'paged' or 'prefix'")
        check_drafter_options(options)
        drafter = make_drafter(speculative, self.model, self.cache, k, self.temperature, self.top_p, self.generator,
                               **options)
        return drafter, SpecStats(drafter.name, k)

    @property
    def max_num_seqs(self) -> int:
        return self.scheduler.max_num_seqs

    @property
    def policy(self) -> str:
        return self.scheduler.policy

    # --- requests --------------------------------------------------------------------------------------
    def add_request(self, request: Request | dict, num_samples: int = 1) -> int:
        """Queue a request (checked first: nothing changes if it is refused); returns its first seq id.
        num_samples > 1: one prefill, then forks into that many sequences (seq ids in a row)."""
        index = self.sequences[-1].request_index + 1 if self.sequences else 0
        request = Request.of(request, index)
        positive_int("num_samples", num_samples)
        cfg, cache = self.model.config, self.cache
        ids = encode_prompt(self.tokenizer, request.prompt, self.chat, cfg, index)
        seq = Sequence(len(self.sequences), index, ids, request.max_new_tokens, request.arrival_s,
                       num_samples=num_samples)
        if seq.max_kv_tokens > cfg.context_len:
            raise ValueError(f"request {index}: {len(ids)} prompt tokens + max_new_tokens={request.max_new_tokens} "
                             f"can never fit the model's context of {cfg.context_len} tokens")
        cache.check_fits(seq.seq_id, seq.max_kv_tokens)  # ValueError: it could never fit the pool
        if not cache.keeps_kv and seq.max_kv_tokens > self.scheduler.max_num_batched_tokens:
            raise ValueError(f"request {index} will feed {seq.max_kv_tokens} tokens in one step (the {cache.name!r} "
                             f"layout recomputes the whole sequence every step), over max_num_batched_tokens="
                             f"{self.scheduler.max_num_batched_tokens}")
        if num_samples > 1 and not cache.can_fork:
            raise ValueError(f"num_samples={num_samples} forks each prompt's cache, which the {cache.name!r} layout "
                             f"cannot do; use cache='paged' or cache='prefix'")
        children = [Sequence(seq.seq_id + k, index, ids, request.max_new_tokens, request.arrival_s)
                    for k in range(1, num_samples)]
        self.sequences += [seq] + children
        self.scheduler.add(seq)
        return seq.seq_id

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # --- the loop ------------------------------------------------------------------------------------------
    def step(self) -> StepRecord | None:
        """Schedule → run → postprocess one step (waiting on the clock first if nothing has arrived yet);
        None when every request has finished."""
        if not self.has_unfinished():
            return None
        start_s = self.clock.now()
        batch = self.scheduler.schedule(start_s)
        while not batch.chunks:  # nothing has arrived yet: wait for the next arrival
            next_arrival = self.scheduler.next_arrival_s()
            assert not self.scheduler.running and next_arrival is not None and next_arrival > start_s, \
                "the scheduler made no progress with requests ready to run"
            self.clock.wait_until(next_arrival)
            start_s = self.clock.now()
            batch = self.scheduler.schedule(start_s)
        wall_start = time.perf_counter()
        decode = tuple(s.seq_id for s, _ in batch.chunks if s.prefilled)  # the rest are prefill chunks
        context_len = max(len(s.token_ids) for s, _ in batch.chunks)
        drafts = self._propose(batch)  # seq_id → Draft, for decoding sequences given lookahead slots

        # run: the model computes every chunk; a row whose chunk reaches the end of its tokens gives a token;
        # a drafted row is verified: the target's logits at its last token and at each draft
        plain = [(s, n) for s, n in batch.chunks if s.seq_id not in drafts]
        logits_by_seq, kv_bytes, weight_bytes = run_chunks(self.model, self.cache, plain)
        verified = self._verify(batch, drafts)
        kv_bytes, weight_bytes = kv_bytes + verified[1], weight_bytes + verified[2]
        scheduled = {s.seq_id for s, _ in batch.chunks}
        emitting = [s for s in self.scheduler.running
                    if s.seq_id in scheduled and (s.seq_id in drafts or self._caught_up(s))]
        rows = self._fork_finished_prefills([s for s in emitting if s.seq_id not in drafts], logits_by_seq)
        next_ids = sample_next(torch.stack([logits for _, logits in rows]), self.temperature, self.top_p,
                               self.generator).tolist() if rows else []
        outcomes = [(seq, [token]) for (seq, _), token in zip(rows, next_ids)]
        outcomes += [(seq, self._accept(verified[0][seq.seq_id], drafts[seq.seq_id])) for seq in emitting
                     if seq.seq_id in drafts]  # the accepted drafts, then the target's own token
        sync(self.model.device)
        self.clock.tick()
        end_s = self.clock.now()
        if self.on_step is not None:
            self.on_step(len(self.steps), self.cache, [s.seq_id for s in self.scheduler.running])

        # postprocess: append, roll back rejected drafts, finish, free
        finished, speculation = [], []
        for seq, tokens in outcomes:
            accepted, reason = len(tokens) - 1, None
            for count, token in enumerate(tokens, 1):
                seq.token_ids.append(token)
                seq.token_times_s.append(end_s)
                reason = ("eos" if token in self.stop_token_ids
                          else "length" if seq.num_generated >= seq.max_new_tokens else None)
                if reason is not None:
                    del tokens[count:]  # drafts past a stop are not output
                    break
            seq.prefilled = seq.status is Status.RUNNING
            if seq.first_token_s is None:
                seq.first_token_s = end_s
            if seq.seq_id in drafts:
                speculation.append(self._roll_back(seq, drafts[seq.seq_id].tokens, accepted, tokens))
            if reason is not None:
                seq.finish_reason, seq.finish_s = reason, end_s
                if seq.status is Status.RUNNING:
                    self.scheduler.finish(seq)
                else:  # a fork that found no room waits to recompute: it is done instead
                    self.scheduler.waiting.remove(seq)
                    seq.status = Status.FINISHED
                if self.drafter is not None:
                    self.drafter.forget(seq.seq_id)
                finished.append(seq.seq_id)
        for seq in batch.preempted if self.drafter is not None else ():
            self.drafter.forget(seq.seq_id)
        wall_s = time.perf_counter() - wall_start
        self._wall_s += wall_s
        record = self._record(batch, decode, start_s, end_s, wall_s, finished, kv_bytes, weight_bytes, context_len,
                              sum(len(tokens) for _, tokens in outcomes), tuple(speculation))
        self.steps.append(record)
        return record

    # --- speculative decoding (kvlab.spec) -----------------------------------------------------------------
    def _propose(self, batch) -> dict:
        """Drafts for the decoding sequences the scheduler gave lookahead slots (at most that many each)."""
        if self.drafter is None or not batch.lookahead:
            return {}
        start = time.perf_counter()
        wanted = [(s, batch.lookahead[s.seq_id]) for s, _ in batch.chunks if s.seq_id in batch.lookahead]
        drafts = self.drafter.propose([(s.seq_id, s.token_ids, k) for s, k in wanted])
        sync(self.model.device)
        self.spec_stats.draft_s += time.perf_counter() - start
        for seq, k in wanted:
            assert len(drafts.get(seq.seq_id, Draft([], None)).tokens) <= k, "a drafter proposed too many tokens"
        return drafts

    def _verify(self, batch, drafts: dict) -> tuple[dict, int, int]:
        if not drafts:
            return {}, 0, 0
        start = time.perf_counter()
        rows = [(s, drafts[s.seq_id].tokens) for s, _ in batch.chunks if s.seq_id in drafts]
        verified = verify_pass(self.model, self.cache, rows)
        sync(self.model.device)
        self.spec_stats.verify_s += time.perf_counter() - start
        return verified

    def _accept(self, target_logits, draft) -> list[int]:
        if self.temperature == 0:
            return accept_greedy(target_logits, draft.tokens)
        p = sampling_probs(target_logits, self.temperature, self.top_p)  # [n + 1, vocab]
        return accept_sampled(p, draft.probs, draft.tokens, self.generator)

    def _roll_back(self, seq, drafted: list[int], accepted: int, emitted: list[int]) -> SpecRow:
        """The cache keeps K/V of every token but the last (fed next step): the rejected drafts' slots go."""
        released = self.cache.rollback(seq.seq_id, len(seq.token_ids) - 1)
        row = SpecRow(seq.seq_id, tuple(drafted), accepted, tuple(emitted), released)
        self.spec_stats.add(row)
        return row

    def _fork_finished_prefills(self, emitting: list[Sequence], logits_by_seq) -> list[tuple[Sequence, torch.Tensor]]:
        """(sequence, logits) rows to sample, in running order; a parent whose prompt is now prefilled forks its
        samples first (they share its K/V and its logits; a fork that finds no room waits to recompute)."""
        rows = []
        for seq in emitting:
            logits = logits_by_seq[seq.seq_id]
            rows.append((seq, logits))
            if seq.num_samples == 1 or seq.num_generated > 0:
                continue
            children = self.sequences[seq.seq_id + 1: seq.seq_id + seq.num_samples]
            forked = []
            for child in children:
                try:
                    self.cache.fork(seq.seq_id, child.seq_id)
                except PoolExhausted:
                    self.scheduler.waiting.appendleft(child)  # recomputes its prompt when there is room
                else:
                    child.status = Status.RUNNING
                    forked.append(child)
                child.cached_prompt_tokens, child.first_scheduled_s = seq.cached_prompt_tokens, seq.first_scheduled_s
                rows.append((child, logits))
            self.scheduler.insert_running_after(seq, forked)
        return rows

    def _caught_up(self, seq: Sequence) -> bool:
        """After the forward: the cache holds all its tokens, so its logits give the next one ("none" holds
        nothing, but every step feeds it the whole sequence)."""
        return not self.cache.keeps_kv or self.cache.num_cached(seq.seq_id) == len(seq.token_ids)

    def _record(self, batch, decode, start_s, end_s, wall_s, finished, kv_bytes, weight_bytes, context_len,
                tokens_out, speculation=()) -> StepRecord:
        cache, sched = self.cache, self.scheduler
        free = cache.blocks_free()
        total = cache.allocator.num_blocks if free is not None else None
        prefill = tuple((s.seq_id, n) for s, n in batch.chunks if s.seq_id not in decode)
        return StepRecord(
            index=len(self.steps), start_s=start_s, end_s=end_s, wall_s=wall_s, decode=decode, prefill=prefill,
            admitted=tuple(s.seq_id for s in batch.admitted), preempted=tuple(s.seq_id for s in batch.preempted),
            finished=tuple(finished), running=tuple(s.seq_id for s in sched.running),
            waiting=tuple(s.seq_id for s in sched.waiting if s.arrival_s <= end_s),
            max_num_seqs=sched.max_num_seqs, blocks_used=total - free if total is not None else None,
            blocks_total=total, kv_usage=cache.usage(), kv_bytes_read=kv_bytes, weight_bytes_read=weight_bytes,
            context_len=context_len, tokens_out=tokens_out,
            swapped_out=tuple(c.seq_id for c in batch.choices if c.mode == "swap"),
            swapped_in=tuple(s.seq_id for s in batch.swapped_in),
            preemption_reasons=tuple(f"seq {c.seq_id}: {c.mode} — {c.reason}" for c in batch.choices),
            tier_faults=tuple(batch.faults), tier_blocks_used=self.tier.num_used if self.tier is not None else None,
            speculation=speculation)

    def run(self, progress: bool = False) -> ServeResult:
        """Step until every request has finished (a progress bar over requests on request)."""
        from ..progress import progress_bar

        bar = progress_bar(len(self.sequences), progress, "serving", "request")
        try:
            while self.has_unfinished():
                record = self.step()
                if bar is not None:
                    bar.update(len(record.finished))
        finally:
            if bar is not None:
                bar.close()
        return self.result()

    def abandon(self) -> None:
        """Free every sequence the cache still holds (after an error: a cache object must not keep them)."""
        for seq in list(self.scheduler.running):
            self.cache.free_sequence(seq.seq_id)
            self.scheduler.running.remove(seq)
            seq.status = Status.WAITING
            self.scheduler.waiting.appendleft(seq)
        for seq in self.sequences if self.drafter is not None else ():
            self.drafter.forget(seq.seq_id)
        for seq_id, swapped in list(self.scheduler.swapped.items()):  # their tier slots too: they will recompute
            self.tier.free(list(swapped.slots))
            del self.scheduler.swapped[seq_id]
            self.sequences[seq_id].prefilled = False

    # --- results -------------------------------------------------------------------------------------------
    def result(self) -> ServeResult:
        stops = self.stop_token_ids
        outputs = [RequestOutput(
            seq_id=s.seq_id, request_index=s.request_index, prompt_token_ids=list(s.prompt_ids),
            token_ids=s.output_ids, text=self.tokenizer.decode([t for t in s.output_ids if t not in stops])
            if self.tokenizer is not None else "", finish_reason=s.finish_reason, arrival_s=s.arrival_s,
            first_scheduled_s=s.first_scheduled_s, first_token_s=s.first_token_s, finish_s=s.finish_s,
            token_times_s=list(s.token_times_s), num_preemptions=s.num_preemptions,
            cached_prompt_tokens=s.cached_prompt_tokens) for s in self.sequences]
        cache = self.cache
        return ServeResult(outputs=outputs, steps=list(self.steps), policy=self.policy, cache=cache.name,
                           max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.scheduler.max_num_batched_tokens,
                           num_blocks=getattr(getattr(cache, "allocator", None), "num_blocks", None),
                           block_size=getattr(cache, "block_size", None),
                           clock="step" if isinstance(self.clock, StepClock) else "wall", wall_s=self._wall_s,
                           speculation=self.spec_stats)
