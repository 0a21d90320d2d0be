"""Lightning task modules of the experiments that are more than classification (see ``vislab.engine.module``)."""
