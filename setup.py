"""pg_jax: fine-tune PaliGemma 1 and 2 on DocVQA with JAX/Flax."""

import setuptools

# Minimum versions are the oldest releases whose public APIs the code uses:
# jax.nn.dot_product_attention (jax 0.4.31), flax linen nn.scan/nn.remat with
# policies, optax.contrib-free optimizers, ml_dtypes' bfloat16 view of numpy |V2.
INSTALL_REQUIRES = [
    "jax>=0.4.35",
    "flax>=0.8.5",
    "optax>=0.2.2",
    "numpy>=1.26",
    "ml_dtypes>=0.4",
    "ml_collections>=0.1.1",
    "sentencepiece>=0.2.0",
    "absl-py>=2.0",
    "tqdm>=4.66",
    "pillow>=10.0",
    "pyarrow>=15.0",
    "matplotlib>=3.8",
]

# The input pipeline (tf.data) is the only part that needs TensorFlow; the model,
# train step, decoding and benchmarks import without it.
DATA_REQUIRES = [
    "tensorflow-cpu>=2.16; platform_machine=='x86_64'",
    "tensorflow>=2.16; platform_machine!='x86_64'",
    "tensorflow-datasets>=4.9.6",
]

# Hugging Face transformers is the numerical oracle in the tests. Install CPU
# torch first (`pip install torch==2.13.0` takes a local CPU wheel in CI).
TEST_REQUIRES = [
    "pytest>=8.0",
    "torch>=2.4",
    "transformers>=4.57",
    "protobuf>=4.25",
    "safetensors>=0.4.3",
]

setuptools.setup(
    name="pg_jax",
    version="0.1.0",
    description="Fine-tune PaliGemma 1 and 2 on document VQA with JAX/Flax.",
    packages=setuptools.find_packages(include=["pg_jax", "pg_jax.*"]),
    package_data={"pg_jax": ["assets/*.model", "assets/*.npz"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES + DATA_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "gpu": ["jax[cuda12]>=0.4.35"]},
)
