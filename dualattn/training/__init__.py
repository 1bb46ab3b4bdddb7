"""Training: the loop (``loop``), the jitted step (``step``), the objective's named terms
(``losses``), the optimizer and schedule (``optim``), on-device augmentation (``augment``),
what a run logs (``log``, ``tensorboard``) and save-and-stop on signals (``preemption``)."""
