"Overrides the tests share for short CLI runs of the shipped digits configs."
TINY_NET = ["model.params.network_config.params.diffusion_model.params.preset=tiny",
            "model.params.network_config.params.diffusion_model.params.class_embed_dim=64",
            "model.params.conditioner_config.params.emb_models.0.params.embed_dim=64"]
"A tiny U-Net and class embedding: seconds per run on a CPU."
TINY = [*TINY_NET, "model.params.sampler_config.params.num_steps=4"]
"The tiny network and 4 sampler steps."
NO_FLOOR = ["lightning.floor_every_n_steps=0"]
"No exact-floor evaluation (tests/test_excess_loss.py tests it): saves its evaluations in every other run."
