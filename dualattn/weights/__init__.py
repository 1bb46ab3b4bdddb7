"""Weight files without torch: ``.pth`` and ``.safetensors`` readers and writers (``files``),
the one mapping between our parameter paths and PyTorch names and layouts (``names``), state
dicts to and from our models (``state_dict``), and ImageNet backbones (``imagenet``)."""
