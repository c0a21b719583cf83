"""Step 1: for prompt pairs that differ by one feature, the cosine similarity of the two prompts' image tokens after
every block at every step (``run``), stored as safetensors capture files (``files``)."""

from .files import Capture, load_capture, read_metadata, save_capture
from .run import CaptureConfig, capture_pair, resolve_steps, run_capture
from .trajectory import PairTrajectory

__all__ = ["Capture", "CaptureConfig", "PairTrajectory", "capture_pair", "load_capture", "read_metadata",
           "resolve_steps", "run_capture", "save_capture"]
