"""The options of a defacing run, defined once: what to distort (:class:`DefaceOptions`) and how DICOM
headers are de-identified (:class:`Deidentification`).

Every entry point reads its defaults from here: the command line (``defacer deface``, ``batch``,
``demo``), the batch runner, the web interface and the library API.  Both are frozen dataclasses,
so one object can be handed to every worker of a batch and recorded as it is.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from defacer.labels import FEATURES
from defacer.phi.options import DeidOptions

if TYPE_CHECKING:
    from defacer.phi.scrub import Scrubber


#: The nose removal (:func:`defacer.distort.nose_region`) never reaches further than this from the detected nose's centroid (mm).  The
#: reference noses of the real heads (nasion to columella, ala to ala) reach 27 to 40 mm from their
#: centroid; the box x2 of a long nose reaches 50 to 60 mm below it, onto the mouth and the cheeks
#: beside it (most of the tissue changed far from every feature), and a detection that runs into
#: the lip makes it longer still.  55 mm keeps the upper lip under the nose in the removal: at 45 mm
#: (only the nose and 5 mm of margin) face detectors found a face after defacing on more heads
#: (reference labels: 5 -> 8 of 19 heads, dlib CNN or Face Mesh on 5 instead of 3).
NOSE_REACH_MM = 55.0

#: Largest volume read by default (:mod:`defacer.checks`) (512^3 voxels: 0.25 mm over a whole head; defacing it needs about
#: 16 bytes of working memory per voxel, 2.1 GB).  Checked against the header before any voxel is read.
DEFAULT_MAX_VOXELS = 512**3

#: Upper bounds of the sizes (mm, or times the feature's own size): a head is about 200 mm across, so a protected
#: depth of 100 mm already protects all but the skin, and larger values only cost memory and time.
MAX_PROTECT_DEPTH_MM, MAX_EYE_BAND_MM, MAX_SCALE = 100.0, 50.0, 10.0


@dataclass(frozen=True)
class DefaceOptions:
    """What to distort and how.

    Attributes
    ----------
    features : tuple of str
        One or more of ``"eyes"``, ``"nose"``, ``"ears"`` (an empty tuple is refused: it would distort nothing).
    seed : int
        Seed of the ear noise (the output is reproducible for a given seed).
    protect_depth_mm : float
        Voxels deeper than this below the head surface are never changed (see :mod:`defacer.pipeline`).
    eye_band_mm : float
        Thickness of the skin layer under each eye cover, in mm.
    eye_box_scale : float
        Size of each eye cover: an ellipse whose semi-axes are this many times the eye's half-extent.
    nose_scale : float
        Enlargement of the nose's bounding box per axis.
    whole_face : bool
        Also set the whole face in front of the eyes to air (:mod:`defacer.distort_face`; the last resort when a
        face is still found after the feature distortions); the protected region still bounds it.
    """

    features: tuple[str, ...] = FEATURES
    seed: int = 0
    protect_depth_mm: float = 10.0
    eye_band_mm: float = 6.0
    eye_box_scale: float = 2.0
    nose_scale: float = 2.0
    whole_face: bool = False

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"Unknown features {unknown}; expected some of {FEATURES}.")
        if not self.features:
            # An empty choice distorts nothing: the unchanged image would come back as a defaced one.
            raise ValueError(f"No feature chosen to distort; expected at least one of {FEATURES} (the default is all).")
        if not isinstance(self.whole_face, bool):
            raise ValueError(f"Expected whole_face True or False; found {self.whole_face!r}.")  # noqa: TRY004 - one error type for every option
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"Expected a seed that is a whole number >= 0 (for example 3); found {self.seed!r}.")
        sizes = (self.protect_depth_mm, self.eye_band_mm, self.eye_box_scale, self.nose_scale)
        # NaN fails every comparison: without the finiteness test, --protect-depth nan switched the brain's protection off.
        # The upper bounds: --protect-depth 1e9 grew one run to 4 GB and 10 CPU minutes (killed), with no end in sight.
        if (not all(math.isfinite(v) for v in sizes) or not 0 <= self.protect_depth_mm <= MAX_PROTECT_DEPTH_MM
                or not 0 < self.eye_band_mm <= MAX_EYE_BAND_MM or not 1 <= self.nose_scale <= MAX_SCALE
                or not 1 <= self.eye_box_scale <= MAX_SCALE):
            message = (f"Expected finite numbers: protect depth 0-{MAX_PROTECT_DEPTH_MM:g} mm, eye band > 0 mm and at most "
                       f"{MAX_EYE_BAND_MM:g} mm, eye box scale and nose scale 1-{MAX_SCALE:g}; found "
                       f"{self.protect_depth_mm}, {self.eye_band_mm}, {self.eye_box_scale} and {self.nose_scale}.")
            raise ValueError(message)


#: The default options (a module-level constant, usable as a default argument: the dataclass is frozen).
DEFAULT_OPTIONS = DefaceOptions()

#: The larger nose removal of the retry after a face is still found (``deface --verify --retry-stronger`` and the
#: advice of :data:`defacer.verify.verdict.REMEDY_FACE`): measured on the real heads of ``../shared/data``
#: (``docs/measurements.md``), it cleared every head the shipped detector left a face on with the defaults.
STRONGER_NOSE_SCALE = 3.0
#: The larger eye cover of that retry.
STRONGER_EYE_BOX_SCALE = 2.5
#: The same, as command-line options.
STRONGER_FLAGS = f"--nose-scale {STRONGER_NOSE_SCALE:g} --eye-box-scale {STRONGER_EYE_BOX_SCALE:g}"


def is_stronger(nose_scale: object, eye_box_scale: object) -> bool:
    """Whether a nose removal and eye cover are already at least :data:`STRONGER_NOSE_SCALE` and
    :data:`STRONGER_EYE_BOX_SCALE` (so a retry with those would change nothing).

    Parameters
    ----------
    nose_scale, eye_box_scale : object
        The options as recorded (numbers; anything else counts as not stronger).
    """
    def size(value: object) -> float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

    return size(nose_scale) >= STRONGER_NOSE_SCALE and size(eye_box_scale) >= STRONGER_EYE_BOX_SCALE


def stronger_options(options: DefaceOptions) -> DefaceOptions | None:
    """The next, stronger step after a face was still found with ``options``, or ``None`` when there is none.

    1. the nose removal and eye cover raised to :data:`STRONGER_NOSE_SCALE` and :data:`STRONGER_EYE_BOX_SCALE`
       (a size already larger is kept);
    2. with those sizes: the whole face in front of the eyes removed as well (``whole_face``);
    3. with both: ``None``.

    Nothing is escalated when neither the nose nor the eyes were chosen (the user asked for the ears only).  The
    features, seed, protection depth and eye band always stay as chosen.
    """
    import dataclasses

    if not {"eyes", "nose"} & set(options.features):
        return None
    if not is_stronger(options.nose_scale, options.eye_box_scale):
        return dataclasses.replace(options, nose_scale=max(options.nose_scale, STRONGER_NOSE_SCALE),
                                   eye_box_scale=max(options.eye_box_scale, STRONGER_EYE_BOX_SCALE))
    if not options.whole_face:
        return dataclasses.replace(options, whole_face=True)
    return None


def describe_step(options: DefaceOptions) -> str:
    """How the command line spells a step of :func:`stronger_options` (for messages)."""
    return "--whole-face (the whole face in front of the eyes removed)" if options.whole_face else STRONGER_FLAGS

#: A random key for this run only (pseudonyms consistent within the run), recorded as such.
RANDOM_KEY_NOTE = "random (this run only)"


@dataclass(frozen=True)
class Deidentification:
    """How DICOM headers are de-identified (DICOM PS3.15 Annex E Basic Profile plus options).

    Attributes
    ----------
    profile : DeidOptions
        The PS3.15 options on top of the Basic Profile (all off by default).  When the pixels are
        defaced, the Clean Recognizable Visual Features option is always added
        (:meth:`scrubber` with ``defaced=True``).
    key : bytes or None
        Secret key of the keyed pseudonyms (UIDs, IDs, date shifts), at least 16 bytes; the same
        key gives the same pseudonyms on every run.  ``None``: a fresh random key per scrubber
        (pseudonyms consistent within that run only).
    record_mapping : bool
        Keep the original -> new identifiers in the scrubber's ``mapping``.
    random_key : bool
        ``key`` was drawn at random for this run (a batch draws one for all its workers): recorded
        as random, like ``key=None``.
    """

    profile: DeidOptions = field(default_factory=DeidOptions)
    key: bytes | None = field(default=None, repr=False)
    record_mapping: bool = False
    random_key: bool = False

    def __post_init__(self) -> None:
        if self.key is not None and len(self.key) < 16:
            raise ValueError(f"The de-identification key holds {len(self.key)} bytes; at least 16 are needed.")

    @property
    def key_note(self) -> str | None:
        """How the key was chosen, for the provenance record (never the key itself): ``None`` for a given key."""
        return RANDOM_KEY_NOTE if self.key is None or self.random_key else None

    def scrubber(self, *, defaced: bool = True) -> Scrubber:
        """The :class:`~defacer.phi.scrub.Scrubber` of these settings (the one place it is built).

        Parameters
        ----------
        defaced : bool
            The pixels had their face features distorted: RecognizableVisualFeatures becomes NO
            and code 113102 is recorded.
        """
        import secrets

        from defacer.phi.pseudonym import Pseudonymizer
        from defacer.phi.scrub import Scrubber

        key = self.key if self.key is not None else secrets.token_bytes(32)
        return Scrubber(self.effective_profile(defaced=defaced), Pseudonymizer(key), record_mapping=self.record_mapping)

    def effective_profile(self, *, defaced: bool = True) -> DeidOptions:
        """The PS3.15 options applied: :attr:`profile`, plus Clean Recognizable Visual Features when ``defaced``."""
        import dataclasses

        return dataclasses.replace(self.profile, clean_recognizable_visual_features=True) if defaced else self.profile


#: The de-identification used when the caller says nothing: the Basic Profile, a random key.
DEFAULT_DEIDENTIFICATION = Deidentification()
