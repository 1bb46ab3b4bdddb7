"""What a run is: its workdir (``workdir.RunDir``), its checkpoints, its model built or loaded,
its dataset, its device mesh and the XLA flags it starts with."""
