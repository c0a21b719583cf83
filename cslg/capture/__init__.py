"""Step 1: for prompt pairs that differ by one feature, per block and step, the cosine similarity of the two prompts'
image tokens (``contrast``) or what perturbing the block does to the positive prompt's prediction (``ablation``,
``patching``: ``finders``); ``run`` captures, ``files`` stores safetensors capture files."""

from .files import Capture, load_capture, read_metadata, save_capture
from .finders import ProbeTrajectory, probe_pair
from .run import CaptureConfig, capture_pair, resolve_steps, run_capture
from .trajectory import PairTrajectory

__all__ = ["Capture", "CaptureConfig", "PairTrajectory", "ProbeTrajectory", "capture_pair", "load_capture",
           "probe_pair", "read_metadata", "resolve_steps", "run_capture", "save_capture"]
