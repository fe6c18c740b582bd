"""The aistack.dev/v1alpha1 API: pydantic models that are the source of truth for the CRDs."""

from aistack.api.v1alpha1 import (
    GROUP,
    VERSION,
    AIStack,
    AIStackSpec,
    AIStackStatus,
    LicensePolicy,
    LicensePolicySpec,
    ModelSpec,
)

__all__ = [
    "GROUP",
    "VERSION",
    "AIStack",
    "AIStackSpec",
    "AIStackStatus",
    "LicensePolicy",
    "LicensePolicySpec",
    "ModelSpec",
]
