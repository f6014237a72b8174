from .clock import StepClock, WallClock
from .engine import Engine
from .generate import generate
from .offload import PREEMPTION_MODES, OffloadCosts, PreemptionChoice
from .metrics import RequestOutput, ServeResult, StepRecord, percentile
from .request import Request, Sequence
from .result import GenerationResult, GenerationStats
from .scheduler import POLICIES, Scheduler
from .serve import build_engine, serve

__all__ = ["generate", "serve", "build_engine", "Engine", "Scheduler", "Request", "Sequence", "StepClock",
           "WallClock", "ServeResult", "RequestOutput", "StepRecord", "GenerationResult", "GenerationStats",
           "POLICIES", "percentile", "PREEMPTION_MODES", "OffloadCosts", "PreemptionChoice"]
