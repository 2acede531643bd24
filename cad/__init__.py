"""cad: breast-MRI computer-aided diagnosis by transfer learning."""

__version__ = "0.1.0"
