"""What every engine does before generation: the prompt text and the images of a conversation.

The prompt text always comes from the checkpoint's own processor chat template (no ``tools=``: the
profile's system prompt already declares the tools), so the transformers engine, vLLM offline and a vLLM
server see the same characters and, after image expansion, the same token ids.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from vretrver.families import checkpoint_model_type  # noqa: F401 - re-exported for older imports
from vretrver.images import load_image
from vretrver.protocol import Conversation


def chat_prompt(processor: Any, conv: Conversation) -> str:
    """The generation prompt for ``conv`` as the processor's chat template renders it."""
    return processor.apply_chat_template(conv.messages, add_generation_prompt=True, tokenize=False)


def count_image_parts(conv: Conversation) -> int:
    n = 0
    for m in conv.messages:
        if isinstance(m.get("content"), list):
            n += sum(1 for p in m["content"] if p.get("type") == "image")
    return n


def conversation_images(conv: Conversation) -> list[Image.Image]:
    """The conversation's images as RGB PIL images, checked against its image parts."""
    n = count_image_parts(conv)
    if n != len(conv.images):
        # A mismatch would otherwise surface deep inside the processor as a token / feature count error.
        raise ValueError(f"conversation has {n} image parts but {len(conv.images)} images")
    out = []
    for i, x in enumerate(conv.images):
        try:
            out.append(load_image(x))
        except (OSError, ValueError) as e:
            raise ValueError(f"image {i} ({str(x)[:200]}) could not be read: {e}") from e
    return out


def png_data_url(img: Image.Image) -> str:
    """A lossless data URL, so a server decodes exactly the pixels a local engine would use."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # lossless either way; level 1 is several times faster
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
