"""Stand-in for Slicer's SampleData module (Qt-only in Slicer): just its registration API.

It records sources exactly where Slicer does (``slicer.modules.sampleDataSources[category]``) and
keeps the ``customDownloader`` that Slicer's widget calls when the sample's button is clicked.
"""

from types import SimpleNamespace

import slicer


class SampleDataLogic:
    @staticmethod
    def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None, nodeNames=None,
                                       customDownloader=None, thumbnailFileName=None, loadFileType="VolumeFile",
                                       loadFiles=None, loadFileProperties=None, checksums=None):
        if not (len(uris) == len(fileNames) == len(nodeNames)):
            raise ValueError("All fields of sample data source must have the same length")
        sources = getattr(slicer.modules, "sampleDataSources", None)
        if sources is None:
            sources = slicer.modules.sampleDataSources = {}
        source = SimpleNamespace(sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames,
                                 customDownloader=customDownloader, thumbnailFileName=thumbnailFileName)
        if all(s.sampleName != sampleName for s in sources.get(category, [])):
            sources.setdefault(category, []).append(source)
