"""cvpipe stages: each is a plain function with a CLI (`python -m components.<stage>`).

Importing any of them first makes the process's TensorFlow start quiet (components.logging_setup): pipeline
steps and Beam workers import cvpipe code before TensorFlow, without calling an entry point.
"""

from components.logging_setup import quiet_tensorflow_start

quiet_tensorflow_start()
