"""Test and benchmark support: plain-PyTorch reference models (`torch_reference`, needs torch).

Nothing is imported here, so `import keras_deepvit` never requires torch.
"""
