"""Running guidance on a model: named passes (``passes``), the branched forward that runs them with shared prefixes
(``executor``), attention perturbation and recording (``attention``), the denoising loop (``sampling``) and block
skipping inside any caller of the transformer (``skip``).

    adapter -> Executor.predict(passes) -> method.combine(predictions) -> scheduler.step
"""
