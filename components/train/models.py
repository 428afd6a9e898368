"""Keras models: a small CNN and ImageNet backbones with a classification head, plus augmentation.

Models take the transform's normalised image (components.normalisation) and output class
probabilities. Backbones get their inputs mapped back to pixels and through their own
`preprocess_input`, so ImageNet weights see what they were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras

from components.config import AugmentConfig, TrainConfig
from components.normalisation import pixels_from_normalised

_BACKBONES = {
    "mobilenet_v2": (keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input),
    "efficientnet_b0": (keras.applications.EfficientNetB0, keras.applications.efficientnet.preprocess_input),
    "resnet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input),
}


@keras.utils.register_keras_serializable(package="cvpipe")
class BackboneInput(keras.layers.Layer):
    """Maps the transform's normalised image back to pixels and through a backbone's preprocessing."""

    def __init__(self, backbone: str, channel_mean: list[float], channel_std: list[float], **kwargs):
        super().__init__(**kwargs)
        self.backbone, self.channel_mean, self.channel_std = backbone, list(channel_mean), list(channel_std)

    def call(self, image: tf.Tensor) -> tf.Tensor:
        pixels = pixels_from_normalised(image, tf.constant(self.channel_mean), tf.constant(self.channel_std))
        return _BACKBONES[self.backbone][1](pixels)

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone, "channel_mean": self.channel_mean,
                "channel_std": self.channel_std}


@keras.utils.register_keras_serializable(package="cvpipe")
class PerImageStandardization(keras.layers.Layer):
    """Scales each image to zero mean and unit variance, as `tf.image.per_image_standardization`.

    The standard deviation is floored at 0.05 (the input is already normalised over the dataset),
    so a near-flat image is not amplified into noise. It multiplies by the reciprocal square root:
    TFLite's int8 division refuses a divisor whose quantized value is 0.
    """

    MIN_STDDEV = 0.05

    def call(self, image: tf.Tensor) -> tf.Tensor:
        mean, variance = tf.nn.moments(image, axes=[1, 2, 3], keepdims=True)
        return (image - mean) * tf.math.rsqrt(tf.maximum(variance, self.MIN_STDDEV ** 2))


class _TrainingOnlyAugmentation(keras.layers.Layer):
    """Base of the custom augmentation layers: a random per-image change in training, identity otherwise."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training:
            return images
        return self.augment(images)

    def augment(self, images: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


@keras.utils.register_keras_serializable(package="cvpipe")
class RandomQuarterTurn(_TrainingOnlyAugmentation):
    """Rotates each image by a random multiple of 90 degrees (square images)."""

    def augment(self, images: tf.Tensor) -> tf.Tensor:
        turns = tf.random.uniform([tf.shape(images)[0]], 0, 4, dtype=tf.int32, seed=self.seed)
        return tf.map_fn(lambda args: tf.image.rot90(args[0], args[1]), (images, turns),
                         fn_output_signature=images.dtype)


@keras.utils.register_keras_serializable(package="cvpipe")
class RandomInversion(_TrainingOnlyAugmentation):
    """Negates half of the (normalised) images: dark-on-light and light-on-dark look alike."""

    def augment(self, images: tf.Tensor) -> tf.Tensor:
        flip = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], seed=self.seed) < 0.5
        return tf.where(flip, -images, images)


@dataclass(frozen=True)
class BuiltModel:
    model: keras.Model
    # The pretrained part (None for small_cnn): frozen first, its top layers fine-tuned later.
    backbone: keras.Model | None


AUGMENTATION = "augmentation"  # the name of the augmentation block in the model


def augmentation(config: AugmentConfig, image_size: int, seed: int) -> keras.Sequential | None:
    """Augmentation layers, active only in training (Keras layers are identities at inference).

    None when every switch is off: tf_keras cannot load a saved model holding an empty
    Sequential (its loader reads the block's first layer).
    """
    layers = []
    if config.crop_ratio < 1:
        side = max(8, round(image_size * config.crop_ratio))
        layers.append(keras.layers.RandomCrop(side, side, seed=seed))
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal_and_vertical", seed=seed))
    if config.quarter_turns:
        layers.append(RandomQuarterTurn(seed=seed))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="constant", seed=seed))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="constant", seed=seed))
    if config.color:
        layers += [keras.layers.RandomBrightness(0.2, value_range=(-3.0, 3.0), seed=seed),
                   keras.layers.RandomContrast(0.2, seed=seed)]
    return keras.Sequential(layers, name=AUGMENTATION) if layers else None


def build_model(
    config: TrainConfig, num_classes: int, image_size: int, channel_mean: list[float], channel_std: list[float]
) -> BuiltModel:
    """The model named by `config.model` for `num_classes` classes of `image_size` images."""
    inputs = keras.Input([image_size, image_size, 3], name="image")
    block = augmentation(config.augment, image_size, config.seed)
    x = inputs if block is None else block(inputs)
    regularizer = keras.regularizers.L1L2(l1=config.l1, l2=config.l2)
    backbone = None
    if config.model == "small_cnn":
        # Each image to zero mean and unit variance: backgrounds differ far more than shapes do.
        x = PerImageStandardization()(x)
        if config.augment.invert:
            x = RandomInversion(seed=config.seed)(x)
        for i, filters in enumerate((32, 64, 64, 128)):
            if i:
                x = keras.layers.MaxPooling2D()(x)
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=regularizer)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
        # Max pooling: "is the shape anywhere in the image", robust to position and clutter.
        x = keras.layers.GlobalMaxPooling2D()(x)
    else:
        constructor = _BACKBONES[config.model][0]
        x = BackboneInput(config.model, channel_mean, channel_std, name="backbone_input")(x)
        backbone = constructor(include_top=False, weights=None if config.weights == "none" else config.weights,
                               input_shape=tuple(x.shape[1:]), pooling="avg")
        backbone.trainable = False
        x = backbone(x, training=False)  # frozen BatchNorm statistics, also when fine-tuning
    x = keras.layers.Dropout(config.dropout)(x)
    if config.hidden_units:
        x = keras.layers.Dense(config.hidden_units, activation="relu", kernel_regularizer=regularizer)(x)
        x = keras.layers.Dropout(config.dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_regularizer=regularizer,
                                 name="probabilities")(x)
    return BuiltModel(keras.Model(inputs, outputs, name=config.model), backbone)


def unfreeze_top(backbone: keras.Model, fraction: float) -> int:
    """Makes the top `fraction` of the backbone's layers trainable; returns how many."""
    count = round(len(backbone.layers) * fraction)
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= len(backbone.layers) - count
    return count
