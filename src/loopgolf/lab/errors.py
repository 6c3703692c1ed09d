"""The exception types that mean "the user's input is wrong", gathered for the CLI.

Each carries a one-line message naming the file or field and the fix; the CLI prints it and exits 2
instead of showing a traceback. Anything else is a bug and keeps its traceback.
"""
from loopgolf.compress.artifact import ArtifactError
from loopgolf.compress.fit import FitError
from loopgolf.config import ConfigError
from loopgolf.data.corpus import CorpusError
from loopgolf.data.fineweb import DownloadError
from loopgolf.data.shards import ShardError
from loopgolf.lab.export import ExportError
from loopgolf.data.tokenizer import TokenizerError
from loopgolf.model.recurrence import PlanError
from loopgolf.lab.runs import ReloadEvalError
from loopgolf.run_phases import ArtifactWriteError
from loopgolf.train.checkpoint import CheckpointError, CheckpointWriteError
from loopgolf.train.guards import DegenerateModelError, TrainingDiverged

USER_ERRORS = (ArtifactError, FitError, ExportError, CorpusError, DownloadError, ConfigError, ShardError, TokenizerError, PlanError, CheckpointError,
               TrainingDiverged, DegenerateModelError, CheckpointWriteError, ArtifactWriteError,
               ReloadEvalError,
               FileNotFoundError)
