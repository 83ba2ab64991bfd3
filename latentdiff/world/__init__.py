"""The Shapes World (WORLD.md): captioned scenes and videos whose ground truth is known."""

from latentdiff.world.captions import canonical_caption, caption_corpus, paraphrase, parse_caption
from latentdiff.world.render import object_bbox, object_center, render_batch, render_scene
from latentdiff.world.scenes import Scene, SceneObject, sample_scene, sample_scenes, sample_spec
from latentdiff.world.video import (
    Clip,
    CurationVideo,
    render_clip,
    render_curation_video,
    sample_clip,
    sample_curation_video,
    write_curation_video,
)

__all__ = [
    "Clip",
    "CurationVideo",
    "Scene",
    "SceneObject",
    "canonical_caption",
    "caption_corpus",
    "object_bbox",
    "object_center",
    "paraphrase",
    "parse_caption",
    "render_batch",
    "render_clip",
    "render_curation_video",
    "render_scene",
    "sample_clip",
    "sample_curation_video",
    "sample_scene",
    "sample_scenes",
    "sample_spec",
    "write_curation_video",
]
