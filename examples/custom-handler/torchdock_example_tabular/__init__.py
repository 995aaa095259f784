"""A worked example of a custom torchdock handler: named fields in, a risk and a decision out."""
