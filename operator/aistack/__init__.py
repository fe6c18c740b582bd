"""aistack-operator: one AIStack resource, one license-checked open AI stack."""

__version__ = "0.1.0"
