"""The geoseg Processing algorithms. Each builds a geoseg command line from its parameters and
runs it with :mod:`.runner`; layers it writes are loaded with the styles geoseg stores beside them."""

import os
import re
from typing import Any

from qgis.core import (QgsProcessing, QgsProcessingAlgorithm, QgsProcessingException,
                       QgsProcessingLayerPostProcessorInterface, QgsProcessingOutputFile, QgsProcessingParameterBoolean,
                       QgsProcessingParameterEnum, QgsProcessingParameterFile, QgsProcessingParameterFileDestination,
                       QgsProcessingParameterFolderDestination, QgsProcessingParameterMapLayer,
                       QgsProcessingParameterMultipleLayers, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterString, QgsProcessingParameterVectorDestination,
                       QgsProcessingParameterVectorLayer)

from . import runner
from .options import BLEND, PROBABILITY_DTYPE, TRAIN_ARCH, TTA


class LoadDefaultStyle(QgsProcessingLayerPostProcessorInterface):
    """Applies the style geoseg stored with a layer (the .qml beside it, or the GeoPackage's
    layer_styles) when Processing loads it into the project."""

    _alive: list[Any] = []  # Processing keeps only a raw pointer: the Python objects must outlive the run

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS's name)
        result = layer.loadDefaultStyle()
        ok = result[1] if isinstance(result, tuple) else bool(result)
        if not ok:
            feedback.pushInfo(f"no geoseg style found for {layer.name()}")
        layer.triggerRepaint()

    @classmethod
    def create(cls):
        p = cls()
        cls._alive.append(p)
        return p


def file_of(layer, what):
    """The file behind ``layer`` (geoseg reads files, GDAL /vsi paths and URLs, not QGIS layers)."""
    if layer is None:
        return None
    path = layer.source().split("|")[0]
    if path.startswith("/vsi") or re.match(r"^[a-z][a-z0-9+.-]*://", path):
        return path
    if not os.path.isfile(path):
        raise QgsProcessingException(f"{what}: geoseg reads files, and {layer.name()!r} is not one; "
                                     "save it to a file first")
    return path


class GeosegAlgorithm(QgsProcessingAlgorithm):
    """Shared by the geoseg algorithms: names, help, and running the command line."""

    NAME = ""
    TITLE = ""
    HELP = ""
    #: progress stage -> (start %, end %) of Processing's bar; other stages fill the whole bar
    STAGES: dict[str, tuple[float, float]] = {}
    #: whether the command reports progress (``--progress json``)
    PROGRESS = True

    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802 (QGIS's names below too)
        return self.TITLE

    def group(self):
        return ""

    def groupId(self):
        return ""

    def shortHelpString(self):
        return self.HELP + ("\n\nRuns the geoseg command line of the environment set under Settings > Options > "
                            "Processing > Providers > geoseg (see docs/qgis.md in geoseg's documentation).")

    def createInstance(self):
        return type(self)()

    def string(self, parameters, name, context):
        v = self.parameterAsString(parameters, name, context)
        return v.strip() if v else ""

    def run_geoseg(self, args, feedback, stages=None):
        """Run ``geoseg ARGS --progress json``; raises QgsProcessingException on failure or cancel.

        ``stages`` maps progress stages to their (start %, end %) of the bar (default :data:`STAGES`).
        """
        stages = self.STAGES if stages is None else stages
        from .provider import command_setting

        try:
            command = runner.resolve_command(command_setting())
            version = runner.check_version(command)
        except runner.GeosegCommandError as e:
            raise QgsProcessingException(str(e)) from None
        feedback.pushInfo(f"geoseg {version}: {' '.join(command + list(args))}")
        messages = []

        def on_progress(fraction, stage):
            lo, hi = stages.get(stage, (0, 100))
            feedback.setProgressText(stage)
            if fraction is not None:
                feedback.setProgress(lo + (hi - lo) * fraction)

        def on_message(line):
            messages.append(line)
            if not line.startswith("error:"):  # an error is raised below: QGIS shows it (reported too, it
                feedback.pushInfo(line)          # was printed five times by qgis_process)

        code, canceled = runner.run(command, list(args), on_progress=on_progress, on_message=on_message,
                                    is_canceled=feedback.isCanceled, progress=self.PROGRESS)
        if canceled:
            raise QgsProcessingException("canceled; partial outputs were removed. " + self.resume_hint())
        if code != 0:
            errors = [m for m in messages if m.startswith("error:")]
            raise QgsProcessingException(errors[-1] if errors else f"geoseg exited with code {code}")
        feedback.setProgress(100)

    def resume_hint(self):
        return ""

    def load_with_style(self, path, context):
        if path and context.willLoadLayerOnCompletion(path):
            context.layerToLoadOnCompletionDetails(path).setPostProcessor(LoadDefaultStyle.create())


class InferAlgorithm(GeosegAlgorithm):
    NAME = "segment"
    TITLE = "Segment raster (infer)"
    HELP = ("Segments a raster of any size with a geoseg model: tiled, blended inference streamed by rows into a "
            "class raster (a Cloud Optimized GeoTIFF with class colours and names), optionally per-class "
            "probabilities and polygons. A canceled run keeps its finished rows: run it again with the same "
            "outputs and 'Resume' checked to continue.")
    STAGES = {"tiles": (0, 90), "polygons": (90, 100)}  # with polygons; without, the tiles fill the bar


    def initAlgorithm(self, config=None):  # noqa: N802
        P = self.addParameter  # noqa: N806
        P(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        P(QgsProcessingParameterFile("MODEL", "Model (.pt checkpoint or .onnx; empty: the demo model)",
                                     fileFilter="geoseg models (*.pt *.onnx);;All files (*.*)", optional=True))
        P(QgsProcessingParameterString("BANDS", "Input bands in model order, 1-based (e.g. 4,3,2,8; empty: all)",
                                       optional=True))
        P(QgsProcessingParameterNumber("TILE_SIZE", "Tile size in pixels (0: the model's)", minValue=0,
                                       defaultValue=0))
        P(QgsProcessingParameterNumber("OVERLAP", "Tile overlap in pixels (-1: the model's)", minValue=-1,
                                       defaultValue=-1))
        P(QgsProcessingParameterEnum("BLEND", "Blend window", options=BLEND, defaultValue=0))
        P(QgsProcessingParameterEnum("TTA", "Test-time augmentation", options=TTA, defaultValue=0))
        P(QgsProcessingParameterNumber("BATCH_SIZE", "Tiles per model call", minValue=1, defaultValue=8))
        P(QgsProcessingParameterString("DEVICE", "Device (auto, cpu, cuda, cuda:N)", defaultValue="auto"))
        P(QgsProcessingParameterNumber("MAX_MEMORY", "Memory budget for inference buffers, MB (0: none)",
                                       type=QgsProcessingParameterNumber.Double, minValue=0, defaultValue=0))
        P(QgsProcessingParameterEnum("PROBABILITY_DTYPE", "Probability raster type", options=PROBABILITY_DTYPE,
                                     defaultValue=0))
        P(QgsProcessingParameterBoolean("RESUME", "Resume an interrupted run (same input, model, options and outputs)",
                                        defaultValue=False))
        P(QgsProcessingParameterRasterDestination("OUTPUT", "Classes"))
        P(QgsProcessingParameterRasterDestination("PROBABILITIES", "Probabilities", optional=True,
                                                  createByDefault=False))
        P(QgsProcessingParameterVectorDestination("POLYGONS", "Polygons", type=QgsProcessing.TypeVectorPolygon,
                                                  optional=True, createByDefault=True))

    def resume_hint(self):
        return "Finished rows are kept: run again with the same outputs and 'Resume' checked to continue."

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        image = file_of(self.parameterAsRasterLayer(parameters, "INPUT", context), "Input raster")
        classes = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        probs = self.parameterAsOutputLayer(parameters, "PROBABILITIES", context)
        polys = self.parameterAsOutputLayer(parameters, "POLYGONS", context)
        args = ["infer", image, "-o", os.path.dirname(classes) or ".", "--classes-out", classes, "--overwrite"]
        model = self.string(parameters, "MODEL", context)
        if model:
            args += ["-m", model]
        if self.string(parameters, "BANDS", context):
            args += ["--bands", self.string(parameters, "BANDS", context)]
        tile = self.parameterAsInt(parameters, "TILE_SIZE", context)
        if tile > 0:
            args += ["--tile-size", str(tile)]
        overlap = self.parameterAsInt(parameters, "OVERLAP", context)
        if overlap >= 0:
            args += ["--overlap", str(overlap)]
        args += ["--blend", BLEND[self.parameterAsEnum(parameters, "BLEND", context)],
                 "--tta", TTA[self.parameterAsEnum(parameters, "TTA", context)],
                 "--batch-size", str(self.parameterAsInt(parameters, "BATCH_SIZE", context)),
                 "--device", self.string(parameters, "DEVICE", context) or "auto"]
        mem = self.parameterAsDouble(parameters, "MAX_MEMORY", context)
        if mem > 0:
            args += ["--max-memory", repr(mem)]
        if probs:
            args += ["--probabilities-out", probs, "--probability-dtype",
                     PROBABILITY_DTYPE[self.parameterAsEnum(parameters, "PROBABILITY_DTYPE", context)]]
        args += ["--vector-out", polys] if polys else ["--no-vector"]
        if self.parameterAsBool(parameters, "RESUME", context):
            args.append("--resume")
        self.run_geoseg(args, feedback, stages=None if polys else {})
        for p in (classes, probs, polys):
            self.load_with_style(p, context)
        return {"OUTPUT": classes, "PROBABILITIES": probs or None, "POLYGONS": polys or None}


class VectorizeAlgorithm(GeosegAlgorithm):
    NAME = "vectorize"
    TITLE = "Vectorize class raster"
    HELP = ("Turns a class raster (geoseg's, or any integer class map such as the USDA Cropland Data Layer) into "
            "polygons identical to a whole-raster polygonization, streamed by row bands in bounded memory, with "
            "class names, areas and perimeters in metres, styled by class.")

    def initAlgorithm(self, config=None):  # noqa: N802
        P = self.addParameter  # noqa: N806
        P(QgsProcessingParameterRasterLayer("INPUT", "Class raster"))
        P(QgsProcessingParameterString("CLASSES", "Keep only these classes (ids or names, e.g. 1,5 or corn,soy)",
                                       optional=True))
        P(QgsProcessingParameterString("CLASS_NAMES", "Class names for rasters without geoseg's (e.g. 1=corn,5=soy)",
                                       optional=True))
        P(QgsProcessingParameterNumber("MIN_AREA", "Drop polygons smaller than this, m² (0: keep all)",
                                       type=QgsProcessingParameterNumber.Double, minValue=0, defaultValue=0))
        P(QgsProcessingParameterNumber("SIEVE", "Merge regions smaller than this many pixels first (0: none)",
                                       minValue=0, defaultValue=0))
        P(QgsProcessingParameterNumber("FILL_HOLES", "Fill holes smaller than this, m² (0: none)",
                                       type=QgsProcessingParameterNumber.Double, minValue=0, defaultValue=0))
        P(QgsProcessingParameterString("SIMPLIFY", "Simplification tolerance: CRS units (15) or pixels (1.5px); "
                                       "empty: none", optional=True))
        P(QgsProcessingParameterString("BOUNDARY_CLASS", "Field-boundary class (id or name) separating fields",
                                       optional=True))
        P(QgsProcessingParameterRasterLayer("PROBABILITIES", "Probability raster (adds confidence_mean)",
                                            optional=True))
        P(QgsProcessingParameterVectorDestination("OUTPUT", "Polygons", type=QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        raster = file_of(self.parameterAsRasterLayer(parameters, "INPUT", context), "Class raster")
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["vectorize", raster, "-o", out, "--overwrite"]
        for name, opt in (("CLASSES", "--classes"), ("CLASS_NAMES", "--class-names"), ("SIMPLIFY", "--simplify"),
                          ("BOUNDARY_CLASS", "--boundary-class")):
            if self.string(parameters, name, context):
                args += [opt, self.string(parameters, name, context)]
        for name, opt in (("MIN_AREA", "--min-area"), ("FILL_HOLES", "--fill-holes")):
            v = self.parameterAsDouble(parameters, name, context)
            if v > 0:
                args += [opt, repr(v)]
        if self.parameterAsInt(parameters, "SIEVE", context) > 0:
            args += ["--sieve", str(self.parameterAsInt(parameters, "SIEVE", context))]
        probs = file_of(self.parameterAsRasterLayer(parameters, "PROBABILITIES", context), "Probability raster")
        if probs:
            args += ["--probabilities", probs]
        self.run_geoseg(args, feedback)
        self.load_with_style(out, context)
        return {"OUTPUT": out}


class TrainAlgorithm(GeosegAlgorithm):
    NAME = "train"
    TITLE = "Train a model"
    HELP = ("Trains a segmentation model on a raster (or several single-band rasters, stacked in order) with a label "
            "raster or training polygons or points, with a spatial validation split; the checkpoint works with "
            "'Segment raster'. A canceled run keeps the checkpoints of finished epochs: run it again with 'Resume' "
            "checked.")

    def initAlgorithm(self, config=None):  # noqa: N802
        P = self.addParameter  # noqa: N806
        P(QgsProcessingParameterMultipleLayers("IMAGES", "Image raster(s)", layerType=QgsProcessing.TypeRaster))
        P(QgsProcessingParameterRasterLayer("LABELS", "Label raster (integer classes, 0 unlabelled)", optional=True))
        P(QgsProcessingParameterVectorLayer("VECTOR_LABELS", "Training polygons or points", optional=True,
                                            types=[QgsProcessing.TypeVectorPolygon, QgsProcessing.TypeVectorPoint]))
        P(QgsProcessingParameterString("CLASS_FIELD", "Attribute holding the class", optional=True))
        P(QgsProcessingParameterEnum("ARCH", "Architecture (auto: geoseg picks from the labels and says which)",
                                     options=TRAIN_ARCH, defaultValue=0))
        P(QgsProcessingParameterString("ENCODER", "smp-* architectures: encoder, e.g. resnet34 (empty: the default)",
                                       optional=True))
        P(QgsProcessingParameterNumber("EPOCHS", "Maximum epochs", minValue=1, defaultValue=20))
        P(QgsProcessingParameterNumber("BATCH_SIZE", "Chips (or pixels) per step; 0: geoseg's default (8 chips, 256 "
                                       "pixels)", minValue=0, defaultValue=0))
        P(QgsProcessingParameterNumber("TILE_SIZE", "Chip side in pixels", minValue=16, defaultValue=64))
        P(QgsProcessingParameterString("DEVICE", "Device (auto, cpu, cuda, cuda:N)", defaultValue="auto"))
        P(QgsProcessingParameterFile("CONFIG", "Options file (YAML or TOML; the parameters above win)",
                                     optional=True))
        P(QgsProcessingParameterBoolean("RESUME", "Resume from the last checkpoint", defaultValue=False))
        P(QgsProcessingParameterFileDestination("OUTPUT", "Model checkpoint", fileFilter="PyTorch checkpoint (*.pt)"))

    def resume_hint(self):
        return "Checkpoints of finished epochs are kept: run again with 'Resume' checked to continue."

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = ["train", "-o", out, "--overwrite"]
        for layer in self.parameterAsLayerList(parameters, "IMAGES", context):
            args += ["--image", file_of(layer, "Image raster")]
        labels = file_of(self.parameterAsRasterLayer(parameters, "LABELS", context), "Label raster")
        vlabels = file_of(self.parameterAsVectorLayer(parameters, "VECTOR_LABELS", context), "Training polygons")
        if bool(labels) == bool(vlabels):
            raise QgsProcessingException("give either a label raster or training polygons (one of them)")
        args += ["--labels", labels] if labels else ["--vector-labels", vlabels]
        if self.string(parameters, "CLASS_FIELD", context):
            args += ["--class-field", self.string(parameters, "CLASS_FIELD", context)]
        args += ["--arch", TRAIN_ARCH[self.parameterAsEnum(parameters, "ARCH", context)],
                 "--epochs", str(self.parameterAsInt(parameters, "EPOCHS", context)),
                 "--tile-size", str(self.parameterAsInt(parameters, "TILE_SIZE", context)),
                 "--device", self.string(parameters, "DEVICE", context) or "auto"]
        if self.string(parameters, "ENCODER", context):
            args += ["--encoder", self.string(parameters, "ENCODER", context)]
        if self.parameterAsInt(parameters, "BATCH_SIZE", context) > 0:
            args += ["--batch-size", str(self.parameterAsInt(parameters, "BATCH_SIZE", context))]
        if self.string(parameters, "CONFIG", context):
            args += ["--config", self.string(parameters, "CONFIG", context)]
        if self.parameterAsBool(parameters, "RESUME", context):
            args.append("--resume")
        self.run_geoseg(args, feedback)
        return {"OUTPUT": out}


class EvaluateAlgorithm(GeosegAlgorithm):
    NAME = "evaluate"
    TITLE = "Evaluate a class raster"
    HELP = ("Scores a predicted class raster against truth (a label raster, or polygons in any CRS): per-class IoU, "
            "precision, recall, F1, macro mIoU and the confusion matrix, written as CSV files and a PNG.")
    PROGRESS = False

    def initAlgorithm(self, config=None):  # noqa: N802
        P = self.addParameter  # noqa: N806
        P(QgsProcessingParameterRasterLayer("PREDICTION", "Predicted class raster"))
        P(QgsProcessingParameterMapLayer("TRUTH", "Truth (label raster or polygons)"))
        P(QgsProcessingParameterString("CLASS_FIELD", "Polygon attribute holding the class", optional=True))
        P(QgsProcessingParameterBoolean("OBJECTS", "Object-level scores", defaultValue=True))
        P(QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", "Output folder"))
        self.addOutput(QgsProcessingOutputFile("METRICS", "Metrics CSV"))
        self.addOutput(QgsProcessingOutputFile("CONFUSION", "Confusion matrix CSV"))
        self.addOutput(QgsProcessingOutputFile("CONFUSION_PNG", "Confusion matrix PNG"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        pred = file_of(self.parameterAsRasterLayer(parameters, "PREDICTION", context), "Predicted class raster")
        truth = file_of(self.parameterAsLayer(parameters, "TRUTH", context), "Truth")
        folder = self.parameterAsString(parameters, "OUTPUT_FOLDER", context)
        os.makedirs(folder, exist_ok=True)
        args = ["evaluate", pred, truth, "-o", folder, "--overwrite"]
        if self.string(parameters, "CLASS_FIELD", context):
            args += ["--class-field", self.string(parameters, "CLASS_FIELD", context)]
        if not self.parameterAsBool(parameters, "OBJECTS", context):
            args.append("--no-objects")
        self.run_geoseg(args, feedback)
        stem = os.path.splitext(os.path.basename(pred))[0]
        return {"OUTPUT_FOLDER": folder, "METRICS": os.path.join(folder, f"{stem}_metrics.csv"),
                "CONFUSION": os.path.join(folder, f"{stem}_confusion.csv"),
                "CONFUSION_PNG": os.path.join(folder, f"{stem}_confusion.png")}


class PreviewAlgorithm(GeosegAlgorithm):
    NAME = "preview"
    TITLE = "Preview (PNG quicklook)"
    HELP = "Draws a PNG quicklook of a class raster: the image underneath, the classes with a legend, outlines."
    PROGRESS = False

    def initAlgorithm(self, config=None):  # noqa: N802
        P = self.addParameter  # noqa: N806
        P(QgsProcessingParameterRasterLayer("CLASSES", "Class raster"))
        P(QgsProcessingParameterRasterLayer("IMAGE", "Image underneath", optional=True))
        P(QgsProcessingParameterString("RGB", "Image bands for red,green,blue, 1-based (empty: automatic)",
                                       optional=True))
        P(QgsProcessingParameterVectorLayer("POLYGONS", "Polygons whose outlines to draw", optional=True,
                                            types=[QgsProcessing.TypeVectorPolygon]))
        P(QgsProcessingParameterFileDestination("OUTPUT", "Preview PNG", fileFilter="PNG image (*.png)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        classes = file_of(self.parameterAsRasterLayer(parameters, "CLASSES", context), "Class raster")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = ["preview", classes, "-o", out, "--overwrite"]
        image = file_of(self.parameterAsRasterLayer(parameters, "IMAGE", context), "Image")
        if image:
            args += ["--image", image]
        if self.string(parameters, "RGB", context):
            args += ["--rgb", self.string(parameters, "RGB", context)]
        polys = file_of(self.parameterAsVectorLayer(parameters, "POLYGONS", context), "Polygons")
        if polys:
            args += ["--polygons", polys]
        self.run_geoseg(args, feedback)
        return {"OUTPUT": out}


ALGORITHMS = [InferAlgorithm, VectorizeAlgorithm, TrainAlgorithm, EvaluateAlgorithm, PreviewAlgorithm]
