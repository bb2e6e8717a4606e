"""Conv layers registered in mmengine's root MODELS registry, so ``backbone.dcn=dict(type=...)`` finds them."""
from .decomposed_dcn import DecomposedDCN, DFOnlyDCN, DKOnlyDCN
from .deformable_kernel import DeformableKernel

__all__ = ['DecomposedDCN', 'DFOnlyDCN', 'DKOnlyDCN', 'DeformableKernel']
