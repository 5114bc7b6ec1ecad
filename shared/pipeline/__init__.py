"""The pipeline core: stage types, stage contracts, local and remote stages, the chain.

Everything that runs a request through text encoder -> diffusion -> decoder lives here,
free of any web framework, so the gateway, the stage services, the Hugging Face
handlers, the SavedModel export, training and the benchmarks all depend on it alone.
"""
