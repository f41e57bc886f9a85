"""The seed's Keras functional ResNet-50, built from ``bench.spec``.

Layer for layer the model of ``../shared/seed/J1-ResNet50-TensorFlow.txt``: ZeroPadding2D(3),
Conv 7x7/2 with bias, BatchNormalization with Keras defaults, ReLU, MaxPooling2D 3x3/2 'valid',
conv_block (stride on the first 1x1 and on the shortcut) and identity_block, then
AveragePooling2D(7), Flatten and Dense(classes, softmax) named ``fc1000``. Names are the seed's.

The model's output is the softmax, as in the seed. ``logits`` computes the pre-softmax values
from the pooled features with fc1000's own kernel and bias (Keras' loss recovers those same
logits from the softmax output, so a loss on them is exactly the seed's loss).
"""

from __future__ import annotations

import keras
from keras import layers

from bench import spec as specs
from bench.spec import BlockSpec, ModelSpec


def _conv(layer: specs.Layer, dtype: str) -> layers.Conv2D:
    return layers.Conv2D(layer.out_channels, (layer.kernel, layer.kernel), strides=(layer.stride, layer.stride),
                         padding=layer.padding, use_bias=layer.use_bias, name=layer.name, dtype=dtype)


def _bn(name: str, dtype: str) -> layers.BatchNormalization:
    # Keras defaults, written out: they are what the torch side must reproduce.
    return layers.BatchNormalization(epsilon=specs.BN_EPSILON, momentum=specs.BN_MOMENTUM, name=name, dtype=dtype)


def _branch(input_tensor, block: BlockSpec, dtype: str):
    """The residual branch F(x): 1x1 -> 3x3 'same' -> 1x1, BN after each, ReLU between."""
    by_local = {layer.local: layer for layer in block.layers()}
    x = input_tensor
    for i in (1, 2, 3):
        x = _conv(by_local[f"conv{i}"], dtype)(x)
        x = _bn(by_local[f"bn{i}"].name, dtype)(x)
        if i < 3:
            x = layers.Activation("relu", name=f"{block.prefix}relu{i}", dtype=dtype)(x)
    return x


def _merge(x, shortcut, block: BlockSpec, dtype: str):
    x = layers.add([x, shortcut], name=block.prefix + "add", dtype=dtype)
    return layers.Activation("relu", name=block.prefix + "relu4", dtype=dtype)(x)


def identity_block(input_tensor, block: BlockSpec, dtype: str = "float32"):
    """1x1 -> 3x3 'same' -> 1x1, each with BN; identity shortcut; ReLU after the add."""
    return _merge(_branch(input_tensor, block, dtype), input_tensor, block, dtype)


def conv_block(input_tensor, block: BlockSpec, dtype: str = "float32"):
    """As identity_block, but the first 1x1 and a 1x1 shortcut conv carry the stride (v1)."""
    by_local = {layer.local: layer for layer in block.layers()}
    x = _branch(input_tensor, block, dtype)  # the seed creates the branch first, then the shortcut
    shortcut = _conv(by_local["res_conv"], dtype)(input_tensor)
    shortcut = _bn(by_local["res_bn"].name, dtype)(shortcut)
    return _merge(x, shortcut, block, dtype)


# Block kind -> builder. Models with other block kinds register theirs here.
BLOCK_BUILDERS = {
    "conv_block": conv_block,
    "identity_block": identity_block,
}


def stem(img_input, spec: ModelSpec, dtype: str = "float32"):
    conv1, bn_conv1 = spec.stem_layers()
    x = layers.ZeroPadding2D((3, 3), name=specs.STEM_PAD, dtype=dtype)(img_input)
    x = _conv(conv1, dtype)(x)
    x = _bn(bn_conv1.name, dtype)(x)
    x = layers.Activation("relu", name=specs.STEM_RELU, dtype=dtype)(x)
    return layers.MaxPooling2D((3, 3), strides=(2, 2), name=specs.STEM_POOL, dtype=dtype)(x)


def head(x, spec: ModelSpec, dtype: str = "float32"):
    if spec.pooling == "avg7":
        x = layers.AveragePooling2D((7, 7), name=specs.HEAD_POOL, dtype=dtype)(x)
        x = layers.Flatten(name=specs.HEAD_FLATTEN, dtype=dtype)(x)
    else:  # global: equal to avg7 at 224 px, and defined at every size
        x = layers.GlobalAveragePooling2D(name=specs.HEAD_POOL, dtype=dtype)(x)
    dense = spec.head_layers()[0]
    # The output layer stays float32 under mixed precision (Keras' mixed-precision guide).
    out_dtype = "float32" if isinstance(dtype, str) and dtype.startswith("mixed") else dtype
    return layers.Dense(dense.out_channels, activation="softmax", name=dense.name, dtype=out_dtype)(x)


def build(spec: ModelSpec, dtype: str = "float32") -> keras.Model:
    """The Keras model for any spec (ResNet-50 or a variant registered in BLOCK_BUILDERS)."""
    img_input = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="input_layer",
                            dtype="float32" if dtype.startswith("mixed") else dtype)
    x = stem(img_input, spec, dtype)
    for block in spec.blocks:
        x = BLOCK_BUILDERS[block.kind](x, block, dtype)
    return keras.Model(img_input, head(x, spec, dtype), name=spec.name)


def ResNet50(input_shape=(224, 224, 3), classes: int = 1000, pooling: str = "avg7",
             dtype: str = "float32", model: str = "resnet50") -> keras.Model:  # noqa: N802 (seed's name)
    """The seed's ``ResNet50(input_shape, classes)``; ``pooling`` 'avg7' (seed) or 'global'."""
    height, width = input_shape[0], input_shape[1]
    if height != width or input_shape[2] != 3:
        raise ValueError(f"square RGB input expected, received input_shape={tuple(input_shape)}")
    return build(specs.build_spec(model, classes, height, pooling), dtype)


def block_output_layer(spec: ModelSpec, point: str) -> str:
    """The Keras layer whose output is the given probe point's output."""
    if point == "stem":
        return specs.STEM_POOL
    if point == "pool":
        return specs.HEAD_FLATTEN if spec.pooling == "avg7" else specs.HEAD_POOL
    if point == "probs":
        return spec.head_layers()[0].name
    block = next(b for b in spec.blocks if b.id == point)
    output = BLOCK_OUTPUTS.get(block.kind)  # ResNet's blocks end in '<prefix>relu4'
    return output(block) if output else block.prefix + "relu4"


def features_model(model: keras.Model, spec: ModelSpec) -> keras.Model:
    """Input -> pooled features (the tensor fc1000 reads)."""
    return keras.Model(model.input, model.get_layer(block_output_layer(spec, "pool")).output)


def logits(model: keras.Model, spec: ModelSpec, features):
    """fc1000's pre-softmax output from pooled features: features @ kernel + bias."""
    dense = model.get_layer(spec.head_layers()[0].name)
    out = keras.ops.matmul(features, keras.ops.cast(dense.kernel, features.dtype))
    if dense.use_bias:
        out = out + keras.ops.cast(dense.bias, features.dtype)
    return out


# ---- resnet50_c3 ----------------------------------------------------------------------------------
# C3 stages of ResNet bottleneck units; the design and its reasons: bench.spec.resnet50_c3_blocks.
def _conv_bn_relu(x, block: BlockSpec, name: str, dtype: str):
    """YOLOv5's Conv (conv without bias -> BN -> activation), with ReLU where YOLOv5 has SiLU."""
    by_local = {layer.local: layer for layer in block.layers()}
    x = _conv(by_local[f"{name}.conv"], dtype)(x)
    x = _bn(by_local[f"{name}.bn"].name, dtype)(x)
    return layers.Activation("relu", name=f"{block.prefix}{name}_relu", dtype=dtype)(x)


def _c3_unit(h, unit: list[specs.Layer], prefix: str, dtype: str):
    """One bottleneck unit: the seed's identity_block, named ``<prefix>conv1`` .. ``<prefix>relu4``."""
    x = h
    for i in (1, 2, 3):
        conv, bn = unit[2 * i - 2], unit[2 * i - 1]
        x = _conv(conv, dtype)(x)
        x = _bn(bn.name, dtype)(x)
        if i < 3:
            x = layers.Activation("relu", name=f"{prefix}relu{i}", dtype=dtype)(x)
    x = layers.add([x, h], name=prefix + "add", dtype=dtype)
    return layers.Activation("relu", name=prefix + "relu4", dtype=dtype)(x)


def c3_block(input_tensor, block: BlockSpec, dtype: str = "float32"):
    """cv3(concat(m(cv1(x)), cv2(x))): the units run on cv1's half, cv2's half bypasses them."""
    y = _conv_bn_relu(input_tensor, block, "cv1", dtype)
    for i, unit in enumerate(specs.c3_unit_layers(block)):
        y = _c3_unit(y, unit, specs.c3_unit_prefix(block, i), dtype)
    bypass = _conv_bn_relu(input_tensor, block, "cv2", dtype)
    # YOLOv5 concatenates m's output first: torch.cat((m(cv1(x)), cv2(x)), 1).
    x = layers.Concatenate(axis=-1, name=block.prefix + "concat", dtype=dtype)([y, bypass])
    return _conv_bn_relu(x, block, "cv3", dtype)


BLOCK_BUILDERS["c3_block"] = c3_block

# Block kind -> its output layer's name, where that is not '<prefix>relu4' (used by block_output_layer).
BLOCK_OUTPUTS = {
    "c3_block": lambda block: block.prefix + "cv3_relu",
}
