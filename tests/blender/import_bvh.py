"""Run inside Blender: import a BVH headless and write every bone's head per frame as JSON.

    blender -b --factory-startup --python tests/blender/import_bvh.py -- IN.bvh OUT.json

OUT.json: {"blender": version, "frames": F, "fps": scene fps, "bones": [names],
"heads": F x bones x 3 world coordinates (Blender's Z-up, metres at scale 1)}.

Blender 3.4's BVH importer opens the file with mode 'rU', which Python 3.11 rejects
("ValueError: invalid mode: 'rU'"); this script gives the importer module an `open` that
drops the 'U' (the file itself is plain ASCII, nothing else changes).
"""

import builtins
import json
import sys

import bpy
import io_anim_bvh.import_bvh as import_bvh


def _open_without_u(file, mode="r", *args, **kwargs):
    return builtins.open(file, mode.replace("U", ""), *args, **kwargs)


import_bvh.open = _open_without_u  # module globals are searched before builtins

src, out = sys.argv[sys.argv.index("--") + 1:][:2]
bpy.ops.import_anim.bvh(filepath=src, global_scale=1.0, frame_start=1, use_fps_scale=False,
                        update_scene_fps=True, update_scene_duration=True, rotate_mode="NATIVE",
                        axis_forward="-Z", axis_up="Y")
obj = next(o for o in bpy.context.scene.objects if o.type == "ARMATURE")
action = obj.animation_data.action
first, last = (int(round(v)) for v in action.frame_range)
names = [b.name for b in obj.pose.bones]
heads = []
for frame in range(first, last + 1):
    bpy.context.scene.frame_set(frame)
    heads.append([list(obj.matrix_world @ obj.pose.bones[n].head) for n in names])
with open(out, "w") as f:
    json.dump({"blender": bpy.app.version_string, "frames": len(heads),
               "fps": bpy.context.scene.render.fps / bpy.context.scene.render.fps_base,
               "bones": names, "heads": heads}, f)
print(f"imported {len(names)} bones, {len(heads)} frames")
