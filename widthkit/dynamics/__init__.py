"""Training dynamics across width: empirical NTK, Hessian top subspace, catapult phases, kernel scaling.

The computational core of the ``lr-phase``, ``subspace``, ``ntk-scaling`` and ``coord-check`` analyses
(:mod:`widthkit.analyses`), whose keyword arguments are those analyses' option names:

* :func:`ntk`, :func:`ntk_top_eigenvalue` -- empirical NTK (torch.func) and lambda_0 (Lanczos on jvp/vjp),
  normalization in :data:`CONVENTION`.
* :func:`hessian_top_eigs`, :func:`gradient_overlap`, :func:`subspace_stability` -- tiny subspace.
* :func:`curvature`, :class:`GaussNewtonOperator` -- trace (Hutch++), SLQ spectral density, Gauss-Newton.
* :func:`lr_phase`, :func:`bisect`, :func:`catapult_recurrence`, :class:`TwoLayerLinear` -- catapult mechanism.
* :func:`ntk_scaling`, :func:`track_kernel` -- kernel change and linearization gap vs width.
* :func:`track_subspace`, :func:`projected_sgd` -- overlap over training; top-only vs bulk-only SGD.
* :func:`coord_check`, :func:`width_exponents` -- mup's coordinate check: every layer's output size and update
  per step across width, and their fitted width exponents.
"""
from .catapult import (Boundary, LRPhaseResult, PhaseRun, PhaseScan, TwoLayerLinear, WidthPhases, bisect,
                       catapult_recurrence, classifier_rule, classify, scan_lrs)
from .coord_check import Coords, ParamCoords, coord_check, width_exponents
from .curvature import Curvature, GaussNewtonOperator, curvature
from .hessian import (GradientOverlap, HessianEigs, gradient_overlap, hessian_top_eigs, random_subspace,
                      subspace_stability)
from .lanczos import lanczos
from .ntk import CONVENTION, NTKEigen, ntk, ntk_top_eigenvalue
from .phase import lr_phase
from .scaling import KernelTrajectory, Linearized, NTKScalingResult, ScalingFit, ntk_scaling, track_kernel
from .subspace import ProjectedSGD, SubspaceTrack, projected_sgd, track_subspace
from .train import GD

__all__ = [
    "Boundary", "CONVENTION", "Coords", "Curvature", "GD", "GaussNewtonOperator", "GradientOverlap", "HessianEigs",
    "KernelTrajectory", "LRPhaseResult", "Linearized", "NTKEigen", "NTKScalingResult", "ParamCoords", "PhaseRun",
    "PhaseScan", "ProjectedSGD", "ScalingFit", "SubspaceTrack", "TwoLayerLinear", "WidthPhases", "bisect",
    "catapult_recurrence", "classifier_rule", "classify", "coord_check", "curvature", "gradient_overlap",
    "hessian_top_eigs", "lanczos", "lr_phase", "ntk", "ntk_scaling", "ntk_top_eigenvalue", "projected_sgd",
    "random_subspace", "scan_lrs", "subspace_stability", "track_kernel", "track_subspace", "width_exponents",
]
