"""What every part of sdserve agrees on: config, wire format, errors, models, batching."""

import os

# Before anything imports TensorFlow: Keras on TensorFlow, and without TF's C++ start-up
# chatter (CPU features, oneDNN notes) burying the service's own log lines.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
